"""Training learns, checkpoints every N steps, logs every step, and resumes to the same weights."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from medfm.keys import Field, Modality
from medfm.models import MultimodalModel, create_model, load_model_config
from medfm.train import TrainConfig, pretrain
from medfm.train.steplog import read_step_log

from ..conftest import REPO


def toy_samples(n=24, seed=0):
    """Samples whose CXR, ECG and report all encode one hidden binary class."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        positive = i % 2 == 1
        sample = {
            Modality.CXR: torch.rand(1, 32, 32, generator=g) * 0.2 + (0.8 if positive else 0.0),
            Modality.REPORT: "The heart is enlarged." if positive else "Heart size is normal.",
            Field.LABEL: {"finding": float(positive)},
            Field.META: {"patient_id": f"P{i // 2}", "study_id": f"S{i}"},
        }
        if i % 3:  # a third of the samples have no ECG
            sample[Modality.ECG] = torch.randn(12, 500, generator=g) * (2.0 if positive else 0.5)
        samples.append(sample)
    return samples


@pytest.fixture
def config():
    return load_model_config(REPO / "configs/models/tiny.yaml")


def test_loss_decreases_and_checkpoint_is_written(tmp_path, config):
    model = create_model(config, seed=0)
    summary = pretrain(model, toy_samples(), TrainConfig(epochs=6, batch_size=8, lr=3e-3, warmup_fraction=0.0),
                       tmp_path, show_progress=False)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert json.loads((tmp_path / "train_state.json").read_text())["progress"]["epoch"] == 6


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.train.test_pretrain import toy_samples
from medfm.models import create_model, load_model_config
from medfm.train import TrainConfig, pretrain
from medfm.train.steplog import read_step_log

def die(step):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: what a preempted job sees

config = TrainConfig.model_validate_json({train!r})
model = create_model(load_model_config({repo!r} + "/configs/models/tiny.yaml"), seed=0)
pretrain(model, toy_samples(), config, {out!r}, show_progress=False, on_step=die)
"""


def test_sigkill_mid_epoch_then_resume_ends_with_the_same_weights(tmp_path, config):
    samples = toy_samples()
    # 3 steps per epoch; step checkpoints after steps 2, 4, 6 and epoch ends 3, 6, 9.
    train = TrainConfig(epochs=3, batch_size=8, checkpoint_every_steps=2)
    torch.use_deterministic_algorithms(True)
    try:
        straight = create_model(config, seed=0)
        pretrain(straight, samples, train, tmp_path / "a", show_progress=False)

        # Killed after step 5 (mid epoch 2): the last checkpoint is step 4's, itself mid-epoch.
        script = KILLED_RUN.format(repo=str(REPO), kill_at=5, train=train.model_dump_json(), out=str(tmp_path / "b"))
        done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == -signal.SIGKILL, done.stderr
        state = json.loads((tmp_path / "b/train_state.json").read_text())["progress"]
        assert state["step"] == 4 and state["epoch"] == 1  # mid-epoch: the step checkpoint, not an epoch one
        assert [r["step"] for r in read_step_log(tmp_path / "b")] == [1, 2, 3, 4, 5]

        resumed = create_model(config, seed=123)  # different init: the checkpoint must override it
        summary = pretrain(resumed, samples, train, tmp_path / "b", show_progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    assert summary["resumed_from_step"] == 4 and summary["resumed_from_epoch"] == 1
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    reloaded = MultimodalModel.from_pretrained(tmp_path / "b")
    assert torch.equal(reloaded.logit_scale, resumed.logit_scale)
    # The log reads as one run: step 5 of the killed run was replaced, not duplicated.
    log_a, log_b = read_step_log(tmp_path / "a"), read_step_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == list(range(1, 10))
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log_a]
    assert summary["history"] == json.loads((tmp_path / "a/train_log.json").read_text())["history"]


def test_step_log_has_one_line_per_step_with_metrics(tmp_path, config):
    model = create_model(config, seed=0)
    # 3 micro-batches → 2 steps per epoch; warmup over the first 2 of 4 steps.
    train = TrainConfig(epochs=2, batch_size=8, accumulate=2, lr=4e-4, warmup_fraction=0.5)
    summary = pretrain(model, toy_samples(), train, tmp_path, show_progress=False)
    records = read_step_log(tmp_path)
    assert summary["steps"] == 4 and [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["epoch"] for r in records] == [1, 1, 2, 2]
    for record in records:
        assert record["loss"] > 0 and record["samples_per_s"] > 0 and record["lr"] > 0
        assert "cxr-report" in record and record["temperature"] > 0
    assert [r["samples_per_s"] * r["seconds"] for r in records] == pytest.approx([16, 8, 16, 8])
    # Linear warmup to the peak, then a cosine: half-way down at the last step.
    assert [r["lr"] for r in records] == pytest.approx([2e-4, 4e-4, 4e-4, 2e-4])


def test_fresh_run_forgets_an_earlier_state(tmp_path, config):
    train = TrainConfig(epochs=1, batch_size=8)
    pretrain(create_model(config, seed=0), toy_samples(), train, tmp_path, show_progress=False)
    summary = pretrain(create_model(config, seed=0), toy_samples(), train, tmp_path, resume=False,
                       show_progress=False)
    assert summary["resumed_from_step"] == 0 and len(read_step_log(tmp_path)) == 3


def test_balanced_sampling_trains(tmp_path, config):
    model = create_model(config, seed=0)
    summary = pretrain(model, toy_samples(), TrainConfig(epochs=2, batch_size=8, balance_by=["finding"]),
                       tmp_path, show_progress=False)
    assert len(summary["history"]) == 2 and all(h["loss"] > 0 for h in summary["history"])


def test_a_loss_with_parameters_is_trained_and_resumed(tmp_path, config, monkeypatch):
    """SigLIP's learnable bias is optimised, checkpointed, and restored on resume."""
    train = TrainConfig(epochs=2, batch_size=8, lr=3e-3, warmup_fraction=0.0,
                        loss={"name": "siglip", "pairs": "anchor", "anchor": "report"})
    full = create_model(config, seed=0)
    pretrain(full, toy_samples(), train, tmp_path / "full", show_progress=False)

    import medfm.train.loop as loop

    class Interrupted(Exception):
        pass

    real_commit = loop.commit_together

    def commit_then_stop(*args, **kwargs):
        real_commit(*args, **kwargs)
        raise Interrupted  # the run dies right after its first complete checkpoint

    monkeypatch.setattr(loop, "commit_together", commit_then_stop)
    with pytest.raises(Interrupted):
        pretrain(create_model(config, seed=0), toy_samples(), train, tmp_path / "resumed", show_progress=False)
    monkeypatch.setattr(loop, "commit_together", real_commit)
    resumed = create_model(config, seed=1)  # every weight must come from the checkpoint
    pretrain(resumed, toy_samples(), train, tmp_path / "resumed", show_progress=False)

    from safetensors.torch import load_file

    from medfm.train.checkpoint import LOSS_PREFIX

    biases = [load_file(str(tmp_path / run / "train_state.safetensors"))[f"{LOSS_PREFIX}bias"]
              for run in ("full", "resumed")]
    assert biases[0] != train.loss.siglip_init_bias  # trained, not left at its initial value
    assert torch.equal(biases[0], biases[1])
    for name, value in full.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name


def test_the_loss_is_a_config_block_and_a_bare_name_still_works():
    assert TrainConfig(loss="siglip").loss.name == "siglip"
    assert TrainConfig(loss={"name": "gram", "anchor": "report", "pairs": "anchor"}).loss.anchor == "report"
    with pytest.raises(ValueError, match="anchor"):
        TrainConfig(loss={"name": "infonce", "pairs": "anchor"})
