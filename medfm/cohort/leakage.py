"""Near-duplicate image leakage: the same picture (re-saved, re-scaled, noised) in two splits.

Patient ids catch most leakage, but a study re-filed under a second patient id, or a
public image reused across datasets, slips through them. A 64-bit perceptual hash
(DCT ``phash``) survives re-scaling, mild noise and re-encoding; two images whose
hashes differ in at most a few bits are treated as the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from medfm.cohort.splits import LeakageError
from medfm.errors import MedfmReadError
from medfm.io import read_radiograph

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
_BLOCK = 512  # rows of the pairwise distance matrix computed at once (512 x n uint64)

NearDuplicate = tuple[str, str, str, str, int]
"""(study_a, study_b, path_a, path_b, hamming distance in bits), study_a listed first in the table."""


def check_near_duplicate_leakage(
    table: pd.DataFrame,
    path_column: str,
    root: str | Path,
    split_column: str = "split",
    max_distance: int = 4,
    study_column: str = "study_id",
) -> list[NearDuplicate]:
    """Raise if two images in different splits are near-identical.

    Every non-empty path in ``path_column`` (relative to ``root``) is read — DICOM
    through :func:`medfm.io.read_radiograph` scaled to 8 bits, PNG/JPEG through
    Pillow as grayscale — and hashed with ``imagehash.phash``. All pairs are compared
    (XOR + popcount on packed 64-bit hashes, in blocks: 2,000 images take well under a
    second after hashing).

    Args:
        table: one row per study with ``path_column`` and ``split_column``.
        path_column: column of image paths; empty/NaN entries are skipped.
        root: folder that relative paths start from (``Cohort.root``).
        split_column: column naming each study's split.
        max_distance: largest Hamming distance (of 64 bits) counted as a duplicate.
        study_column: column of study ids used in the report (the index if absent).

    Returns:
        Near-duplicate pairs *within* the same split: not leakage, but worth a look.

    Raises:
        LeakageError: a pair lies in different splits; the message lists the pairs
            (study ids, paths, distance) and ``err.pairs`` holds them.
        MedfmReadError: an image cannot be read (never skipped silently).
    """
    rows = table[table[path_column].notna() & (table[path_column].astype(str).str.strip() != "")]
    root = Path(root)
    paths = rows[path_column].astype(str).tolist()
    studies = (rows[study_column] if study_column in rows.columns else rows.index.to_series()).astype(str).tolist()
    splits = rows[split_column].astype(str).to_numpy()
    hashes = np.array([image_phash(root / p) for p in paths], dtype=np.uint64)

    leaked: list[tuple[int, int, int]] = []
    within: list[NearDuplicate] = []
    for i, j, distance in near_duplicate_pairs(hashes, max_distance):
        if splits[i] != splits[j]:
            leaked.append((i, j, distance))
        else:
            within.append((studies[i], studies[j], paths[i], paths[j], distance))
    if leaked:
        shown = "; ".join(f"{studies[i]} ({paths[i]}, {splits[i]}) ~ {studies[j]} ({paths[j]}, {splits[j]}): "
                          f"{d} bits" for i, j, d in leaked[:10])
        more = f"; and {len(leaked) - 10} more" if len(leaked) > 10 else ""
        err = LeakageError(f"{len(leaked)} near-duplicate image pair(s) in different splits "
                           f"(phash distance <= {max_distance}): {shown}{more}")
        err.pairs = [(studies[i], studies[j], paths[i], paths[j], d) for i, j, d in leaked]
        raise err
    return within


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All index pairs ``(i, j, distance)`` with ``i < j`` whose 64-bit hashes differ in <= ``max_distance`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        keep = i < j
        pairs.extend(zip(i[keep].tolist(), j[keep].tolist(), distance[i[keep] - start, j[keep]].tolist(),
                         strict=True))
    return pairs


def image_phash(path: Path) -> np.uint64:
    """64-bit perceptual hash of a DICOM radiograph or a PNG/JPEG image, packed into one integer."""
    return pack_hash(imagehash.phash(_as_8bit_image(path)).hash)


def pack_hash(bits: np.ndarray | Sequence[bool]) -> np.uint64:
    """Pack an 8x8 boolean hash into a uint64 (row-major, first bit most significant)."""
    return np.packbits(np.asarray(bits, dtype=bool).ravel()).view(">u8")[0].astype(np.uint64)


def _as_8bit_image(path: Path) -> Image.Image:
    if path.suffix.lower() in PILLOW_SUFFIXES:
        if not path.is_file():
            raise MedfmReadError(path, "file not found")
        try:
            with Image.open(path) as image:
                return image.convert("L")
        except (UnidentifiedImageError, OSError) as err:
            raise MedfmReadError(path, f"not a readable image ({err})") from None
    values = read_radiograph(path).array[0]
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).astype(np.uint8))
