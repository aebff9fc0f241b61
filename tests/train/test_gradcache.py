"""Gradient caching gives the gradients of the plain full-batch backward."""

import pytest
import torch

from medfm.keys import Modality
from medfm.models import create_model, load_model_config
from medfm.train.config import TrainConfig
from medfm.train.distributed import DistContext
from medfm.train.gradcache import embed, gradcache_backward
from medfm.train.loop import _build_loss, contrastive_backward

from ..conftest import REPO
from .test_pretrain import toy_samples

ALONE = DistContext()


@pytest.fixture(scope="module")
def config():
    return load_model_config(REPO / "configs/models/tiny.yaml")


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, samples, chunk, patients=True):
    model.zero_grad(set_to_none=True)
    index = {s["meta"]["patient_id"]: i for i, s in enumerate(samples)} if patients else None
    loss, _ = contrastive_backward(model, _build_loss(TrainConfig()), samples, len(samples), index, chunk,
                                   "fp32", ALONE)
    return loss, _grads(model)


@pytest.mark.parametrize("chunk", [3, 5])
def test_gradients_equal_the_full_batch_without_dropout(config, chunk):
    model = create_model(config, seed=0).eval()  # eval: no dropout, so one pass and chunks agree exactly
    samples = toy_samples(10)  # ECG missing in a third of samples: packed rows differ per chunk
    assert any(Modality.ECG not in s for s in samples[:chunk])
    full_loss, full = _run(model, samples, None)
    cached_loss, cached = _run(model, samples, chunk)
    assert torch.allclose(full_loss, cached_loss, atol=1e-6)
    assert full.keys() == cached.keys() and len(full) > 10
    for name, grad in full.items():
        assert torch.allclose(grad, cached[name], atol=1e-6), name


def test_dropout_masks_are_replayed(config):
    """With dropout on, the reference is the same chunks embedded once with a graph from the same RNG."""
    model = create_model(config, seed=0).train()  # the tiny text encoder has dropout 0.1
    samples = toy_samples(9)
    loss_fn = _build_loss(TrainConfig())
    scale = model.temperature_scale

    def loss_of(embeddings):
        masks = {m: torch.tensor([m in s for s in samples]) for m in embeddings}
        return loss_fn(embeddings, masks, scale(), None)

    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    parts = [embed(model, samples[i:i + 4], "fp32", ALONE.device) for i in range(0, 9, 4)]
    joined = {m: torch.cat([p[m] for p in parts if m in p]) for m in parts[0]}
    reference_loss, _ = loss_of(joined)
    reference_loss.backward()
    reference = _grads(model)

    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    loss, _ = gradcache_backward(model, samples, 4, loss_of, "fp32", ALONE.device)
    cached = _grads(model)
    assert torch.allclose(loss, reference_loss, atol=1e-6)
    for name, grad in reference.items():
        assert torch.allclose(grad, cached[name], atol=1e-6), name

    # Without the replay the dropout masks differ: the test above can fail.
    torch.manual_seed(8)
    model.zero_grad(set_to_none=True)
    other, _ = loss_of({m: e for m, e in embed(model, samples, "fp32", ALONE.device).items()})
    assert not torch.allclose(other, reference_loss, atol=1e-6)
