"""Which samples form each contrastive batch of an epoch.

``mixed`` (the default): every study once per epoch, shuffled, cut into batches; a batch
holds whatever modalities its studies have.

``by_modality``: every study is split into one sample per image with its own report
(see :func:`medfm.keys.report_of`), and each batch holds one modality's pairs, as
ImageBind trains each modality against its anchor (Girdhar et al., CVPR 2023). With
images aligned only to their own reports, a study's images never meet in the loss, so
splitting the study loses nothing; what it gains is a full batch of negatives for a
modality that only some studies have (in a mixed batch of 32 demo visits, about 8
carry a CT), and ``repeat``, which shows a rare modality's pairs several times per
epoch without re-running the encoders of the studies' other images.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medfm.errors import MedfmError
from medfm.keys import IMAGE_MODALITIES, Field, Modality, report_of


def split_by_image(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One sample ``{image, report.<image>, label, meta}`` per image that has its own report.

    Raises:
        MedfmError: no sample has an image with its own report (the cohort joins its
            reports into one document, or has none).
    """
    views = []
    for sample in samples:
        for image in IMAGE_MODALITIES:
            if image in sample and report_of(image) in sample:
                views.append({image: sample[image], report_of(image): sample[report_of(image)],
                              Field.LABEL: sample[Field.LABEL], Field.META: sample[Field.META]})
    if not views:
        raise MedfmError("batches: by_modality pairs each image with its own report, and no study has one; give "
                         "the cohort one report column per image modality (report: {cxr: cxr_report_path, ...})")
    return views


def modality_of(sample: dict[str, Any]) -> Modality:
    """The image modality of a sample made by :func:`split_by_image`."""
    return next(m for m in IMAGE_MODALITIES if m in sample)


class EpochBatches:
    """Global batches of every epoch; their number depends only on sizes, their content on the seed.

    A batch of fewer than two samples has no negatives and is dropped.

    Args:
        samples: the training samples (for ``by_modality``, those of :func:`split_by_image`).
        global_batch: samples per contrastive batch over all processes.
        by_modality: one modality per batch (else ``mixed``).
        repeat: per modality, how many times its samples are drawn per epoch (``by_modality``).
    """

    def __init__(self, samples: list[dict[str, Any]], global_batch: int, by_modality: bool,
                 repeat: dict[Modality, int] | None = None):
        self.global_batch = global_batch
        self.by_modality = by_modality
        if by_modality:
            groups: dict[Modality, list[int]] = {}
            for i, sample in enumerate(samples):
                groups.setdefault(modality_of(sample), []).append(i)
            self.groups = {m: torch.tensor(groups[m] * (repeat or {}).get(m, 1)) for m in sorted(groups)}
            sizes = [len(g) for g in self.groups.values()]
        else:
            sizes = [len(samples)]
        self.count = sum(_batches_of(n, global_batch) for n in sizes)
        if self.count == 0:
            raise MedfmError(f"{len(samples)} training sample(s): a contrastive step needs at least 2")

    def __len__(self) -> int:
        return self.count

    def of_epoch(self, order: torch.Tensor | None, generator: torch.Generator) -> list[list[int]]:
        """The epoch's batches, as lists of sample indices.

        Args:
            order: the epoch's shuffled sample indices (``mixed``; ignored for ``by_modality``).
            generator: seeded per epoch; shuffles each modality's samples and the batch order.
        """
        if not self.by_modality:
            return _cut(order.tolist(), self.global_batch)
        batches = []
        for group in self.groups.values():
            batches += _cut(group[torch.randperm(len(group), generator=generator)].tolist(), self.global_batch)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _cut(indices: list[int], size: int) -> list[list[int]]:
    return [chunk for s in range(0, len(indices), size) if len(chunk := indices[s:s + size]) >= 2]


def _batches_of(n: int, size: int) -> int:
    return math.ceil(n / size) - (n % size == 1)
