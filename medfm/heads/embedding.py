"""Embeddings of preprocessed samples, batched: the one path from samples to the shared space."""

from __future__ import annotations

from typing import Any

import torch

from medfm.keys import is_text
from medfm.models import MultimodalModel


@torch.no_grad()
def embed_samples(model: MultimodalModel, samples: list[dict[str, Any]], key: str,
                  batch_size: int = 128) -> tuple[torch.Tensor, list[int]]:
    """Embeddings of every sample that has input ``key`` (a modality or ``report.<image>``), and their indices."""
    model.eval()
    index = [i for i, s in enumerate(samples) if key in s]
    parts = []
    for start in range(0, len(index), batch_size):
        chunk = [samples[i][key] for i in index[start:start + batch_size]]
        inputs = chunk if is_text(key) else torch.stack(chunk)
        parts.append(model.encode(key, inputs))
    return (torch.cat(parts) if parts else torch.empty(0, model.config.embed_dim)), index
