"""Training throughput and memory: base encoders vs the machine's peak, the full step vs its encoders.

Four measurements in one process (the memory ones in fresh child processes), each
against a baseline measured in the same run:

1. peak: the best rate of square fp32 matmuls (2048³, 4096³), torch's default threads;
2. the ``cxr`` (2D) and ``ct`` (3D) encoders of ``configs/models/base.yaml``, the encoder
   module alone (no projection: it is one small matmul), forward+backward: samples/s and
   GFLOP/s (``torch.utils.flop_counter``) as a share of the peak (1); baseline: a bare
   ``monai.networks.nets.ViT`` of the same width, depth and tokens, no medfm code;
3. the full pretraining step of ``configs/models/demo.yaml`` (second-epoch reads through
   the preprocessing cache, collate, every encoder, loss, backward, AdamW) against the
   sum of each bare encoder's forward+backward on the same batch's packed inputs;
4. the step's memory increment with a 4096-sample batch under gradient caching vs a
   256-sample plain batch (and a plain 4096 batch), ``configs/models/tiny.yaml`` with
   cxr, ecg and report, each in a fresh process.

Usage: ``python evaluation/bench/bench_train.py`` (prints JSON), or through ``run.py``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
BASE, DEMO, TINY = (ROOT / f"configs/models/{name}.yaml" for name in ("base", "demo", "tiny"))
OVERHEAD_TARGET, SHARE_TARGET, MEMORY_TARGET = 0.15, 0.55, 1.5


# -- 1. peak ---------------------------------------------------------------------------------

def matmul_peak_gflops(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 3) -> dict[str, Any]:
    """Best rate of single square fp32 matmuls; best-of because other jobs share these cores."""
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up: thread pool and allocator
        best = min(_seconds(lambda a=a, b=b: a @ b) for _ in range(repeats))
        rates[n] = 2 * n**3 / best / 1e9
    return {"gflops": max(rates.values()), "by_size": {f"{n}^3": r for n, r in rates.items()}}


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- 2. base encoders ------------------------------------------------------------------------

class _BareViT(nn.Module):
    """MONAI's ViT as anyone would build it, mean-pooled like medfm's encoders; no medfm code."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        from monai.networks.nets import ViT

        self.vit = ViT(**kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0].mean(dim=1)


def train_rate(module: nn.Module, x: Any, repeats: int, peak: float) -> dict[str, Any]:
    """Forward+backward of ``module`` on ``x``: the first step counts FLOPs and warms up, then timed repeats.

    The FLOP-counted step doubles as the warm-up: its dispatch overhead is never timed.
    The best of the timed repeats is kept, as for the peak, so both sides see the same
    kind of interference from other jobs.
    """
    module.train()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    with FlopCounterMode(display=False) as counter:
        step()
    seconds = min(_seconds(step) for _ in range(repeats))
    flops = counter.get_total_flops()
    batch = len(x)
    gflops = flops / seconds / 1e9
    return {"batch": batch, "step_s": seconds, "samples_per_s": batch / seconds, "gflop_per_step": flops / 1e9,
            "gflops": gflops, "share_of_peak": gflops / peak, "repeats": repeats}


def base_encoders(peak: float, batches: dict[str, int] | None = None,
                  repeats: dict[str, int] | None = None) -> dict[str, Any]:
    """``cxr`` and ``ct`` of the base config, each next to a bare MONAI ViT of the same shape."""
    from medfm.keys import Modality
    from medfm.models import load_model_config
    from medfm.registry import ENCODERS

    batches = batches or {"cxr": 4, "ct": 1}  # a few seconds (2D) to tens of seconds (3D) per step on 2 cores
    repeats = repeats or {"cxr": 2, "ct": 1}  # base 3D costs ~1.2 TFLOP per sample: one timed step
    config = load_model_config(BASE)
    rows = {}
    for key in ("cxr", "ct"):
        modality = Modality(key)
        enc_config = config.encoder_config(modality)
        torch.manual_seed(0)
        encoder = ENCODERS.get(config.encoders[modality]["name"])(enc_config)
        if key == "cxr":
            if enc_config.conv_stem:
                raise ValueError(f"{BASE}: the bare-ViT baseline assumes cxr has no conv_stem")
            size, dims, x = enc_config.image_size, 2, torch.rand(batches[key], 1, enc_config.image_size,
                                                                   enc_config.image_size)
        else:
            size, dims, x = enc_config.image_size, 3, torch.rand(batches[key], 1, *enc_config.image_size)
        shape = {"hidden_size": enc_config.hidden_size, "mlp_dim": enc_config.mlp_dim,
                 "num_layers": enc_config.num_layers, "num_heads": enc_config.num_heads}
        medfm_row = train_rate(encoder, x, repeats[key], peak)
        del encoder
        gc.collect()
        torch.manual_seed(0)
        bare = _BareViT(in_channels=1, img_size=size, patch_size=enc_config.patch_size, spatial_dims=dims,
                        qkv_bias=True, **shape)
        bare_row = train_rate(bare, x, repeats[key], peak)
        del bare
        gc.collect()
        sizes, patches = (size, size) if dims == 2 else size, enc_config.patch_size
        tokens = math.prod(s // p for s, p in zip(sizes, (patches,) * 2 if dims == 2 else patches, strict=True))
        rows[key] = {"encoder": config.encoders[modality]["name"], "tokens": tokens, **shape,
                     "medfm": medfm_row, "bare_monai_vit": bare_row}
    return rows


# -- 3. full multimodal step -----------------------------------------------------------------

def _encoder_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Each encoder's packed input in a collated batch; every report key's texts go to the report encoder."""
    from medfm.keys import Field, Modality, is_text

    inputs: dict[str, Any] = {}
    for key in batch[Field.MASK]:
        if is_text(key):
            inputs.setdefault(Modality.REPORT, []).extend(batch[key])
        else:
            inputs[Modality(key)] = batch[key]
    return inputs


def _forward_backward(encoder: torch.nn.Module, inputs: Any) -> None:
    out = encoder(inputs)
    if out.requires_grad:  # a frozen text model has nothing to backpropagate into
        out.sum().backward()


def full_step(n_patients: int = 48, batch_size: int = 32, timed_epochs: int = 2) -> dict[str, Any]:
    """The demo model's training step as ``pretrain`` runs it, against its encoders alone.

    A synthetic cohort (CXR, ECG, reports) is read once through a ``PreprocessCache``
    (the first epoch fills it); each timed step then reads its samples back through
    ``CohortDataset`` (cache hits), and runs the loop's own ``_train_step``: collate,
    every encoder, projections, loss, backward, gradient clipping, AdamW. Right after
    each step, each encoder alone runs forward+backward on that batch's packed inputs.
    One untimed epoch first, so the report encoder's frozen-prefix cache is warm, as in
    every epoch after the first.
    """
    from medfm.cohort.manifest import load_cohort
    from medfm.cohort.synth import synthesize_cohort
    from medfm.data.cache import PreprocessCache
    from medfm.data.dataset import CohortDataset, collate_samples, materialize
    from medfm.models import create_model, load_model_config
    from medfm.train.config import TrainConfig
    from medfm.train.distributed import DistContext
    from medfm.train.loop import _build_loss, _optimizer, _StepPlan, _train_step
    from medfm.train.precision import resolve_precision

    model_config = load_model_config(DEMO)
    # Mixed batches of whole visits, so one step runs every encoder (the demo itself trains
    # one modality per batch; the target is the step with all encoders).
    train_config = TrainConfig.model_validate({**yaml.safe_load((ROOT / "configs/train/demo.yaml").read_text()),
                                               "precision": "fp32", "checkpoint_every_steps": None,
                                               "batches": "mixed", "repeat": {}})
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        manifest = synthesize_cohort(tmp / "cohort", n_patients=n_patients, seed=0, progress=False)
        cohort_yaml = yaml.safe_load((ROOT / "cohorts/demo.yaml").read_text())
        cohort_yaml.pop("synth", None)
        cohort_yaml["manifest"] = str(manifest)
        (tmp / "cohort.yaml").write_text(yaml.safe_dump(cohort_yaml))
        cohort = load_cohort(tmp / "cohort.yaml")

        model = create_model(model_config, seed=0)
        preprocess = {m: (lambda value, m=m: model.preprocess(m, value)) for m in model.modalities}
        specs = {m: model.input_spec(m) for m in model.modalities}
        rows = list(cohort.table.index)
        dataset = CohortDataset(cohort, rows, preprocess, cache=PreprocessCache(tmp / "cache"), specs=specs)
        materialize(dataset, workers=0, description="bench: first epoch")  # fills the cache
        n_batches = len(dataset) // batch_size
        if n_batches < 1:
            raise ValueError(f"{n_patients} patients gave {len(dataset)} complete studies, fewer than one batch "
                             f"of {batch_size}")

        ctx, precision = DistContext(), resolve_precision("fp32", torch.device("cpu"))
        loss_fn = _build_loss(train_config)
        optimizer = _optimizer(model, loss_fn, train_config)
        trainable = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
        plan = None
        patient_ids = sorted({str(cohort.table.loc[r, cohort.config.patient_column]) for r in rows})
        patient_index = {p: i for i, p in enumerate(patient_ids)}
        model.train()

        totals = {"read_s": 0.0, "train_step_s": 0.0, "collate_s": 0.0}
        encoder_s: dict[str, float] = {}
        steps = 0
        for epoch in range(1 + timed_epochs):
            for k in range(n_batches):
                indices = range(k * batch_size, (k + 1) * batch_size)
                tick = time.perf_counter()
                samples = [dataset[i][0] for i in indices]
                read = time.perf_counter() - tick
                plan = plan or _StepPlan(samples, train_config, 1)  # one step = the whole batch handed to it
                tick = time.perf_counter()
                _train_step(model, loss_fn, optimizer, trainable, samples, train_config, plan, steps,
                            patient_index, precision, ctx)
                step = time.perf_counter() - tick
                tick = time.perf_counter()
                batch = collate_samples(samples)
                collate = time.perf_counter() - tick
                alone = {}
                for m, inputs in _encoder_inputs(batch).items():
                    model.zero_grad(set_to_none=True)
                    alone[str(m)] = _seconds(lambda m=m, inputs=inputs: _forward_backward(model.encoders[m], inputs))
                model.zero_grad(set_to_none=True)
                steps += 1
                if epoch == 0:
                    continue  # first epoch: fills the report encoder's prefix cache, warms the allocator
                totals["read_s"] += read
                totals["train_step_s"] += step
                totals["collate_s"] += collate
                for m, s in alone.items():
                    encoder_s[m] = encoder_s.get(m, 0.0) + s
        timed = n_batches * timed_epochs
        full = totals["read_s"] + totals["train_step_s"]
        encoders = sum(encoder_s.values())
    return {
        "model": "demo", "batch": batch_size, "timed_steps": timed, "studies": len(dataset),
        "step_s": full / timed, "samples_per_s": batch_size * timed / full,
        "parts_s": {"cache_read": totals["read_s"] / timed, "train_step": totals["train_step_s"] / timed,
                    "collate_alone": totals["collate_s"] / timed},
        "encoders_s": {m: s / timed for m, s in encoder_s.items()},
        "encoders_sum_s": encoders / timed,
        "overhead": full / encoders - 1,
        "overhead_without_reads": totals["train_step_s"] / encoders - 1,
    }


# -- 4. memory -------------------------------------------------------------------------------

def _rss_bytes() -> int:
    """Resident set size now (Linux ``/proc``); ``ru_maxrss`` only gives the peak."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's resident high-water mark (``VmHWM``), which ``/proc/self/clear_refs`` resets.

    Not ``ru_maxrss``: the kernel carries the parent's peak into it across fork + exec, so
    a child of this multi-GiB benchmark would report the parent's peak (both are returned).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/self/status has no VmHWM line")


def _memory_child(batch: int, chunk: int | None) -> dict[str, Any]:
    """One training step of the tiny model (cxr, ecg, report) on ``batch`` samples; peak RSS vs before.

    Runs in a fresh process so the peak belongs to this step alone. The report
    encoder's frozen-prefix cache is filled before the step (as in every epoch after
    the first) so the increment is the step's activations, gradients and optimizer
    state, not the cache.
    """
    import medfm.models  # noqa: F401  (registers the encoders)
    from medfm.keys import Field, Modality
    from medfm.models import create_model
    from medfm.models.config import ModelConfig
    from medfm.train.config import TrainConfig
    from medfm.train.distributed import DistContext
    from medfm.train.loop import _build_loss, _optimizer, _StepPlan, _train_step
    from medfm.train.precision import resolve_precision

    torch.set_num_threads(1)  # memory, not speed: one thread keeps per-thread scratch out of the figure
    raw = yaml.safe_load(TINY.read_text())
    raw["encoders"] = {k: v for k, v in raw["encoders"].items() if k in ("cxr", "ecg", "report")}
    model = create_model(ModelConfig.model_validate(raw), seed=0)
    cxr, ecg = model.config.encoder_config(Modality.CXR), model.config.encoder_config(Modality.ECG)
    generator = torch.Generator().manual_seed(0)
    words = ["heart", "size", "normal", "enlarged", "effusion", "no", "left", "right", "sinus", "rhythm",
             "atrial", "fibrillation", "hypertrophy", "clear", "lungs", "mild", "small", "pleural"]
    samples = []
    for i in range(batch):
        picks = torch.randint(len(words), (12,), generator=generator).tolist()
        samples.append({
            Modality.CXR: torch.rand(1, cxr.image_size, cxr.image_size, generator=generator),
            Modality.ECG: torch.randn(12, round(ecg.sample_rate * ecg.duration_s), generator=generator) * 0.5,
            Modality.REPORT: f"Study {i}. " + " ".join(words[p] for p in picks) + ".",
            Field.LABEL: {}, Field.META: {"patient_id": f"P{i:05d}", "study_id": f"S{i:05d}"},
        })
    config = TrainConfig(batch_size=batch, grad_cache_chunk=chunk, precision="fp32", epochs=1)
    with torch.no_grad():
        texts = [s[Modality.REPORT] for s in samples]
        for start in range(0, batch, 256):
            model.encoders[Modality.REPORT](texts[start:start + 256])
    loss_fn = _build_loss(config)
    optimizer = _optimizer(model, loss_fn, config)
    trainable = [p for p in (*model.parameters(), *loss_fn.parameters()) if p.requires_grad]
    plan = _StepPlan(samples, config, 1)
    patient_index = {s[Field.META]["patient_id"]: i for i, s in enumerate(samples)}
    model.train()
    gc.collect()
    peak_before = _peak_rss_bytes()
    # Building the model and the samples may peak higher than the step: reset the kernel's
    # high-water mark (Linux >= 4.0) so the peak read after the step is the step's own.
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_bytes()
    tick = time.perf_counter()
    loss, _, _ = _train_step(model, loss_fn, optimizer, trainable, samples, config, plan, 0, patient_index,
                             resolve_precision("fp32", torch.device("cpu")), DistContext())
    seconds = time.perf_counter() - tick
    peak = _peak_rss_bytes()
    return {"batch": batch, "grad_cache_chunk": chunk, "rss_before_mib": before / 2**20,
            "peak_rss_mib": peak / 2**20, "peak_while_building_mib": peak_before / 2**20,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
            "step_increment_mib": (peak - before) / 2**20, "step_s": seconds, "loss": loss}

def _run_child(batch: int, chunk: int | None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(batch)]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        return {"batch": batch, "grad_cache_chunk": chunk, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(large: int = 4096, small: int = 256, chunk: int = 256) -> dict[str, Any]:
    """Gradient-cached large batch vs plain small batch (the target) and plain large batch (what caching saves)."""
    cached, plain_small, plain_large = _run_child(large, chunk), _run_child(small, None), _run_child(large, None)
    ratio = None
    if "error" not in cached and "error" not in plain_small:
        ratio = cached["step_increment_mib"] / plain_small["step_increment_mib"]
    return {"model": "tiny (cxr, ecg, report)", "gradcache_large": cached, "plain_small": plain_small,
            "plain_large": plain_large, "increment_ratio": ratio}


# -- all -------------------------------------------------------------------------------------

def run() -> dict[str, Any]:
    """Every measurement above; the peak right before the encoders, in this process."""
    started = time.perf_counter()
    peak = matmul_peak_gflops()
    encoders = base_encoders(peak["gflops"])
    step = full_step()
    mem = memory()
    return {"name": "training throughput and memory", "threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "peak": peak, "base_encoders": encoders, "full_step": step,
            "memory": mem, "targets": {"share_of_peak": SHARE_TARGET, "overhead": OVERHEAD_TARGET,
                                       "memory_ratio": MEMORY_TARGET},
            "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-child", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.memory_child is not None:
        print(json.dumps(_memory_child(args.memory_child, args.chunk)))
        return 0
    os.chdir(ROOT)
    print(json.dumps(run(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
