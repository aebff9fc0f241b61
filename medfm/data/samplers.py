"""Sampling weights that balance sites, devices or labels during training."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from medfm.keys import Field


def group_key(sample: dict[str, Any], by: Sequence[str]) -> tuple:
    """The values of ``by`` for one sample, looked up in its labels, then its metadata."""
    labels, meta = sample.get(Field.LABEL, {}), sample.get(Field.META, {})
    return tuple(labels[k] if k in labels else meta.get(k) for k in by)


def balanced_weights(samples: Sequence[dict[str, Any]], by: Sequence[str]) -> torch.Tensor:
    """Per-sample weights ∝ 1 / size of its group, so every group is drawn equally often.

    Groups are the combinations of the ``by`` values (e.g. ``["site"]``, or
    ``["site", "atrial_fibrillation"]`` to balance both at once). Weights sum to 1.
    """
    keys = [group_key(s, by) for s in samples]
    counts = Counter(keys)
    weights = torch.tensor([1.0 / counts[k] for k in keys], dtype=torch.float64)
    return weights / weights.sum()


def balanced_order(samples: Sequence[dict[str, Any]], by: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """One epoch of indices drawn with replacement from :func:`balanced_weights`."""
    return torch.multinomial(balanced_weights(samples, by), len(samples), replacement=True, generator=generator)
