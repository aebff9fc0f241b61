"""Two CPU processes with per-rank batch B train exactly like one process with batch 2B."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from medfm.models import create_model, load_model_config
from medfm.train import TrainConfig, pretrain
from medfm.train.distributed import DistContext, init_distributed

from ..conftest import REPO
from .test_pretrain import toy_samples

TINY = REPO / "configs/models/tiny.yaml"


def _model():
    model = create_model(load_model_config(TINY), seed=0)
    # Each rank draws its own dropout masks, one process draws one set: only without dropout are
    # the two runs the same computation, which is what this test checks.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _train_two_steps(out, ctx, batch_size, grad_cache_chunk=None):
    """Two real optimizer steps; returns step 1's loss and gradients and the final weights."""
    model = _model()
    first = {}

    def keep_first_gradients(step):
        if step == 1:
            first.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

    # grad_clip high: the gradients compared are the raw averaged ones, not clipped copies.
    # fp32: equality to 1e-6 is a statement about fp32 sums (this test's CPU may have native bf16,
    # which `auto` would pick, and bf16 rounds a 4-sample and an 8-sample reduction differently).
    config = TrainConfig(epochs=1, batch_size=batch_size, warmup_fraction=0.0, grad_clip=1e9,
                         grad_cache_chunk=grad_cache_chunk, precision="fp32")
    pretrain(model, toy_samples(16), config, out, show_progress=False, dist_ctx=ctx, on_step=keep_first_gradients)
    loss = torch.tensor([json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]]) \
        if ctx.is_main else torch.zeros(1)
    return {"loss": loss, **first, **{f"weight.{k}": v.contiguous() for k, v in model.state_dict().items()}}


def _worker(rank, world_size, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        ctx = init_distributed()
        assert (ctx.rank, ctx.world_size) == (rank, world_size)
        # Gradient caching inside the ranks too: chunks of 3 of each rank's 4 samples.
        save_file(_train_two_steps(out / "ckpt", ctx, 4, grad_cache_chunk=3), str(out / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _comparable(name, tensor):
    """The tensor without attention key biases: their gradient is zero in exact arithmetic (softmax
    ignores a shift), and Adam scales that float noise up to a full step, differently per run."""
    if name.endswith(("qkv.bias", "in_proj_bias")):
        third = len(tensor) // 3
        return torch.cat([tensor[:third], tensor[2 * third:]])
    return tensor[:0] if name.endswith("key.bias") else tensor


def write_tiny_pipeline(root, patients):
    """A pipeline over a synthetic cohort of ``patients`` patients with the tiny model."""
    cohort = (REPO / "cohorts/demo.yaml").read_text()
    cohort = cohort.replace("../data/demo/manifest.csv", "data/manifest.csv")
    (root / "cohort.yaml").write_text(cohort.replace("patients: 600", f"patients: {patients}"))
    (root / "pipeline.yaml").write_text(
        "name: tiny\noutput_dir: out\ncohort: cohort.yaml\n"
        f"model: {REPO}/configs/models/tiny.yaml\ntrain: {REPO}/configs/train/tiny.yaml\n"
        f"plan: {REPO}/evaluation/plans/demo.yaml\n")
    return root / "pipeline.yaml"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path):
    # spawn, not fork: forking after torch started its OpenMP pool deadlocks.
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    alone = _train_two_steps(tmp_path / "alone", DistContext(), 8)

    assert torch.allclose(ranks[0]["loss"], alone["loss"], atol=1e-6)
    for got in ranks:
        # Same parameters with a gradient (an encoder no sample used has none, on every rank).
        assert {k for k in got if k.startswith("grad.")} == {k for k in alone if k.startswith("grad.")}
        for name in [k for k in got if k.startswith("grad.")]:
            assert torch.allclose(got[name], alone[name], atol=1e-6), name
        for name in [k for k in alone if k.startswith("weight.")]:
            assert torch.allclose(_comparable(name, got[name]), _comparable(name, alone[name]), atol=1e-6), name
    assert not torch.allclose(alone["weight.logit_scale"], _model().logit_scale)  # it did train
    # Only rank 0 wrote the checkpoint and the log, one line per step.
    assert (tmp_path / "ckpt/model.safetensors").is_file()
    assert len((tmp_path / "ckpt/train_log.jsonl").read_text().splitlines()) == 2


def test_medfm_pretrain_under_torchrun(tmp_path):
    """The real entry point on two gloo processes, through the CLI, on a tiny synthetic cohort.

    Both ranks read the cohort through one preprocessing cache folder at the same time.
    """
    pipeline = write_tiny_pipeline(tmp_path, patients=30)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()),
                           "-m", "medfm.cli", "pretrain", str(pipeline)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    state = (tmp_path / "out/checkpoint/train_state.json").read_text()
    assert '"world_size": 2' in state
    log = (tmp_path / "out/checkpoint/train_log.jsonl").read_text().splitlines()
    assert len(log) >= 2  # one line per step, written by rank 0 only
    from safetensors.torch import load_file

    entries = list((tmp_path / "out/cache/entries").rglob("*.safetensors"))
    assert entries and not list((tmp_path / "out/cache").rglob("*.tmp*"))  # no stray temp files
    for entry in entries:  # every entry the two ranks wrote side by side is complete
        assert torch.isfinite(load_file(str(entry))["value"]).all()
