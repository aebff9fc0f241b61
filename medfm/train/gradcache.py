"""Gradient caching: a large contrastive batch in bounded memory, with the same gradients.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (GradCache). A contrastive loss couples every sample with every other, so the
batch cannot simply be split; but the loss depends on the encoders only through the
embeddings. So: (1) embed the batch in chunks without a graph, (2) compute the loss on
all embeddings and backpropagate to the embeddings only, (3) re-embed each chunk with a
graph and push the cached embedding gradients through it. Peak activation memory is
one chunk's; the RNG state is replayed per chunk so dropout masks match pass (1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medfm.data.dataset import collate_samples
from medfm.keys import Field
from medfm.models.multimodal import MultimodalModel
from medfm.train.precision import Precision, autocast

LossOf = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


def collate_on(samples: list[dict[str, Any]], device: torch.device) -> dict[str, Any]:
    """:func:`collate_samples`, with tensors moved to ``device`` (texts stay strings)."""
    batch = collate_samples(samples)
    if device.type == "cpu":
        return batch
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            batch[key] = value.to(device, non_blocking=True)
    batch[Field.MASK] = {m: v.to(device) for m, v in batch[Field.MASK].items()}
    return batch


def embed(model: MultimodalModel, samples: list[dict[str, Any]], precision: Precision,
          device: torch.device) -> dict[str, torch.Tensor]:
    """Packed fp32 embeddings per modality of ``samples`` (empty dict for no samples)."""
    if not samples:
        return {}
    with autocast(precision, device):
        out = model(collate_on(samples, device))
    return {m: e.float() for m, e in out.items()}


@dataclass
class _Chunk:
    samples: list[dict[str, Any]]
    rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None


def gradcache_backward(model: MultimodalModel, samples: list[dict[str, Any]], chunk_size: int,
                       loss_of: LossOf, precision: Precision, device: torch.device,
                       weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Accumulate into ``.grad`` the gradients of ``weight × loss_of(embed(samples))``.

    Args:
        samples: this process's samples, in batch order.
        chunk_size: samples embedded at once; bounds activation memory.
        loss_of: from packed embeddings of ``samples`` (all modalities, in sample order)
            to ``(loss, logs)``; under torchrun it gathers across ranks first.
        weight: factor on the loss (``1 / accumulate`` for gradient accumulation).

    Returns:
        The (unweighted, detached) loss and its logs.
    """
    chunks = []
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(samples), chunk_size):
            piece = samples[start:start + chunk_size]
            cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
            chunks.append(_Chunk(piece, torch.get_rng_state(), cuda_rng))
            for m, e in embed(model, piece, precision, device).items():
                parts.setdefault(m, []).append(e)
    # The concatenation of chunks' packed rows is the full batch's packed layout.
    leaves = {m: torch.cat(p).requires_grad_() for m, p in parts.items()}
    loss, logs = loss_of(leaves)
    (loss * weight).backward()
    after_rng = torch.get_rng_state()
    after_cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    offsets = dict.fromkeys(leaves, 0)
    for chunk in chunks:
        torch.set_rng_state(chunk.rng)
        if chunk.cuda_rng is not None:
            torch.cuda.set_rng_state_all(chunk.cuda_rng)
        fresh = embed(model, chunk.samples, precision, device)
        outputs, grads = [], []
        for m, e in fresh.items():
            grad = leaves[m].grad
            if grad is not None:  # a modality no loss term used has no gradient
                outputs.append(e)
                grads.append(grad[offsets[m]:offsets[m] + len(e)])
            offsets[m] += len(e)
        if outputs:
            torch.autograd.backward(outputs, grads)
    torch.set_rng_state(after_rng)
    if after_cuda is not None:
        torch.cuda.set_rng_state_all(after_cuda)
    return loss.detach(), logs


def plain_backward(model: MultimodalModel, samples: list[dict[str, Any]], loss_of: LossOf,
                   precision: Precision, device: torch.device, weight: float = 1.0,
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """The same contract as :func:`gradcache_backward`, in one forward pass with a graph."""
    loss, logs = loss_of(embed(model, samples, precision, device))
    (loss * weight).backward()
    return loss.detach(), logs

