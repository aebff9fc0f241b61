"""Training learns, checkpoints every epoch, and resumes to the same weights."""

import json

import pytest
import torch

from medfm.keys import Field, Modality
from medfm.models import MultimodalModel, create_model, load_model_config
from medfm.train import TrainConfig, pretrain

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


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path, config, monkeypatch):
    samples = toy_samples()
    train = TrainConfig(epochs=3, batch_size=8)  # 3 steps per epoch
    straight = create_model(config, seed=0)
    pretrain(straight, samples, train, tmp_path / "a", show_progress=False)

    import medfm.train.loop as loop

    calls = {"n": 0}
    real_collate = loop.collate_samples

    def dies_in_epoch_three(batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated crash in the middle of epoch 3")
        return real_collate(batch)

    monkeypatch.setattr(loop, "collate_samples", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        pretrain(create_model(config, seed=0), samples, train, tmp_path / "b", show_progress=False)
    monkeypatch.setattr(loop, "collate_samples", real_collate)

    resumed = create_model(config, seed=123)  # different init: the checkpoint must override it
    summary = pretrain(resumed, samples, train, tmp_path / "b", show_progress=False)
    assert summary["resumed_from_epoch"] == 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    reloaded = MultimodalModel.from_pretrained(tmp_path / "b")
    assert torch.equal(reloaded.logit_scale, resumed.logit_scale)


def test_balanced_sampling_trains(tmp_path, config):
    model = create_model(config, seed=0)
    summary = pretrain(model, toy_samples(), TrainConfig(epochs=2, batch_size=8, balance_by=["finding"]),
                       tmp_path, show_progress=False)
    assert len(summary["history"]) == 2 and all(h["loss"] > 0 for h in summary["history"])
