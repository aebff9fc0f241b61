"""What every alignment loss shares: which packed rows meet, which pairs count, what is a positive.

Embeddings arrive *packed*: ``embeddings[m]`` holds one row per sample that has
modality ``m``, in batch order, and ``masks[m]`` says which samples those are.
Losses only ever index these packed rows; an absent modality is never replaced
by a zero vector, so it can neither act as a negative nor receive gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import torch

from medfm.errors import MedfmError
from medfm.keys import Modality, encoder_of, image_of_report

SamePatient = Literal["mask", "positive"]


@dataclass(frozen=True)
class ModalityPair:
    """Row-aligned embeddings of the samples that have both modalities of a pair.

    Attributes:
        name: ``"<x>-<y>"`` with ``x < y``; the key under which the pair's loss is logged.
        a: rows of modality ``x``, one per shared sample, in batch order.
        b: rows of modality ``y``, aligned with ``a``.
        groups: patient ids of those samples, or None when same-patient handling is off.
    """

    name: str
    a: torch.Tensor
    b: torch.Tensor
    groups: torch.Tensor | None


def check_packed(embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Raise if a packed tensor's row count disagrees with its presence mask (a collate bug, not data)."""
    for modality, packed in embeddings.items():
        if modality not in masks:
            raise MedfmError(f"loss input: modality {modality!r} has embeddings but no presence mask")
        present = int(masks[modality].sum())
        if packed.shape[0] != present:
            raise MedfmError(f"loss input: {modality!r} has {packed.shape[0]} packed rows "
                             f"but its mask marks {present} samples present")


def packed_rows(packed: torch.Tensor, mask: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """Packed rows of the samples in ``subset`` (a batch mask with ``subset ⊆ mask``), in batch order."""
    # The k-th present sample is packed row k, so a cumulative count maps batch index → packed index.
    index = torch.cumsum(mask.long(), 0) - 1
    return packed[index[subset]]


def select_pairs(keys: list[str], pairs: Literal["all", "anchor"],
                 anchor: Modality | None) -> list[tuple[str, str]]:
    """Input-key pairs to align, each ordered by name (so a pair's log key does not depend on the config).

    An image's own report (``report.oct``) pairs with that image only; for ``anchor``
    it counts as ``report``, so ``anchor: report`` aligns every image with its own report.
    """
    every = [(x, y) for x, y in combinations(sorted(keys), 2)
             if not _foreign_report(x, y) and not _foreign_report(y, x)]
    if pairs == "all":
        return every
    return [(x, y) for x, y in every if anchor in (encoder_of(x), encoder_of(y))]


def _foreign_report(key: str, other: str) -> bool:
    """``key`` is some image's own report and ``other`` is not that image."""
    image = image_of_report(key)
    return image is not None and image != other


def pair_name(x: str, y: str) -> str:
    """``"<x>-<y>"``, with an image's own report named ``report`` (``oct-report``)."""
    return f"{encoder_of(x)}-{encoder_of(y)}"


def modality_pairs(embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                   groups: torch.Tensor | None, pairs: Literal["all", "anchor"] = "all",
                   anchor: Modality | None = None) -> list[ModalityPair]:
    """Every selected pair with at least two shared samples (one sample has no negative to contrast with)."""
    check_packed(embeddings, masks)
    found = []
    for x, y in select_pairs(list(embeddings), pairs, anchor):
        both = masks[x] & masks[y]
        if int(both.sum()) < 2:
            continue
        found.append(ModalityPair(
            name=pair_name(x, y),
            a=packed_rows(embeddings[x], masks[x], both),
            b=packed_rows(embeddings[y], masks[y], both),
            groups=None if groups is None else groups[both],
        ))
    if not found:
        present = {str(m): int(masks[m].sum()) for m in embeddings}
        raise MedfmError(f"loss input: no modality pair has two shared samples in this batch "
                         f"(samples per modality: {present}, pairs: {pairs}, anchor: {anchor})")
    return found


def mean_over_pairs(embeddings: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                    groups: torch.Tensor | None, pairs: Literal["all", "anchor"], anchor: Modality | None,
                    pair_loss: Callable[[ModalityPair], torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of ``pair_loss`` over the selected pairs, with each pair's value logged under its name."""
    losses, logs = [], {}
    for pair in modality_pairs(embeddings, masks, groups, pairs, anchor):
        loss = pair_loss(pair)
        losses.append(loss)
        logs[pair.name] = loss.item()
    return torch.stack(losses).mean(), logs


def target_masks(groups: torch.Tensor | None, n: int, same_patient: SamePatient,
                 device: torch.device | None = None, rows: slice | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives and counted entries of an ``n × n`` sample-vs-sample score matrix.

    Args:
        rows: only these rows of the matrix (a blockwise loss builds it a block at a time).

    Returns:
        ``(positives, valid)``, both boolean ``(n, n)`` (or ``(len(rows), n)``). The diagonal
        is always a positive. Two different samples of one patient are left out of ``valid``
        (``mask``: neither positive nor negative) or added to ``positives``
        (``positive``). ``positives ⊆ valid``; every other valid entry is a negative.
    """
    rows = slice(0, n) if rows is None else rows
    eye = torch.arange(rows.start, rows.stop, device=device)[:, None] == torch.arange(n, device=device)[None, :]
    if groups is None:
        return eye, torch.ones_like(eye)
    same = groups[rows, None] == groups[None, :]
    if same_patient == "positive":
        return same, torch.ones_like(eye)
    return eye, ~same | eye
