"""DICOM series (one file per slice) → one 3D :class:`~medfm.io.images.Image`.

Slices are ordered by their position along the slice normal, never by InstanceNumber
or file name, which scanners and anonymisers do not keep consistent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medfm.io.dicom import decode_pixels, dicom_meta, header_int, header_numbers, load_dataset
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import Image, plane_affine

GAP_FACTOR = 1.5  # a step this many times the median step is reported as a gap
_ORIENTATION_TOL = 1e-4
_SPACING_TOL = 1e-3  # mm
_DUPLICATE_TOL = 1e-3  # mm along the normal


def read_dicom_series(
    paths_or_folder: str | Path | Iterable[str | Path],
    series_uid: str | None = None,
    allow_duplicates: bool = False,
) -> Image:
    """Assemble single-frame DICOM slices of one series into a ``(C, D, H, W)`` volume.

    Slices are sorted by ``ImagePositionPatient · (row × col)`` (the position along the
    normal of ImageOrientationPatient). The affine maps ``(d, h, w)`` to LPS mm: its
    origin is the first slice's ImagePositionPatient, its ``h`` and ``w`` columns the
    orientation cosines times PixelSpacing, its ``d`` column the median vector between
    consecutive slice positions. ``spacing`` is ``(slice step, row, col)`` in mm.

    Gaps (a step over 1.5x the median step) and, when allowed, dropped duplicate
    positions are listed in ``meta["slice_warnings"]``.

    Args:
        paths_or_folder: a folder (its files that are DICOM, non-recursive) or file paths.
        series_uid: SeriesInstanceUID to read when the files hold several series.
        allow_duplicates: keep the first of several slices at one position instead of
            raising.

    Raises:
        EmptyFileError: no DICOM slice found, or the chosen series is absent.
        UnsupportedFormatError: several series and no ``series_uid``; a multi-frame
            file or a slice without ImagePositionPatient/ImageOrientationPatient.
        CorruptFileError: inconsistent orientation, pixel spacing or matrix size inside
            the series; duplicated slice positions (unless allowed); undecodable pixels;
            geometry fields that are not finite numbers, or a spacing that is not positive.
    """
    files, origin_name = _list_files(paths_or_folder)
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in files:
        ds = load_dataset(path, stop_before_pixels=True)
        if "SOPClassUID" in ds and "Rows" not in ds:
            continue  # DICOMDIR, structured reports, ... in a folder: not slices
        series[str(ds.get("SeriesInstanceUID", ""))].append((path, ds))
    if not series:
        raise EmptyFileError(origin_name, "no DICOM image slices found")
    if series_uid is None and len(series) > 1:
        raise UnsupportedFormatError(
            origin_name, f"{len(series)} series found, choose one with series_uid=: {', '.join(sorted(series))}"
        )
    uid = series_uid if series_uid is not None else next(iter(series))
    if uid not in series:
        raise EmptyFileError(origin_name, f"series {uid} not found among {', '.join(sorted(series))}")
    slices = series[uid]

    first_path, first = slices[0]
    orientation = _geometry_field(first_path, first, "ImageOrientationPatient", 6)
    row_spacing, col_spacing = (float(v) for v in _geometry_field(first_path, first, "PixelSpacing", 2))
    if min(row_spacing, col_spacing) <= 0:
        raise CorruptFileError(first_path, f"PixelSpacing {[row_spacing, col_spacing]}: must be positive")
    for path, ds in slices:
        if header_int(ds, "NumberOfFrames", 1, path) > 1:
            raise UnsupportedFormatError(path, "multi-frame file inside a series; read it with read_dicom_image")
        if not np.allclose(_geometry_field(path, ds, "ImageOrientationPatient", 6), orientation, atol=_ORIENTATION_TOL):
            raise CorruptFileError(path, f"ImageOrientationPatient differs from {first_path.name} in the same series")
        if not np.allclose(_geometry_field(path, ds, "PixelSpacing", 2), (row_spacing, col_spacing), atol=_SPACING_TOL):
            raise CorruptFileError(path, f"PixelSpacing differs from {first_path.name} in the same series")
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise CorruptFileError(path, f"matrix size differs from {first_path.name} in the same series")

    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([_geometry_field(path, ds, "ImagePositionPatient", 3) for path, ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]

    warnings_: list[str] = []
    keep = [0]
    for index in range(1, len(slices)):
        if abs(along[index] - along[keep[-1]]) < _DUPLICATE_TOL:
            message = (f"duplicate slice position {along[index]:.3f} mm: {slices[index][0].name} "
                       f"and {slices[keep[-1]][0].name}")
            if not allow_duplicates:
                raise CorruptFileError(slices[index][0], message)
            warnings_.append(f"{message}; kept {slices[keep[-1]][0].name}")
            continue
        keep.append(index)
    slices, positions, along = [slices[i] for i in keep], positions[keep], along[keep]

    if len(slices) > 1:
        steps = np.diff(along)
        median_step = float(np.median(steps))
        for index in np.flatnonzero(steps > GAP_FACTOR * median_step):
            warnings_.append(
                f"gap of {steps[index]:.3f} mm (median step {median_step:.3f} mm) between "
                f"{slices[index][0].name} and {slices[index + 1][0].name}"
            )
        slice_vector = np.median(np.diff(positions, axis=0), axis=0)
    else:
        step = header_numbers(first, "SpacingBetweenSlices", first_path) or header_numbers(
            first, "SliceThickness", first_path)
        slice_vector = normal * (step[0] if step and step[0] else 1.0)

    planes = []
    for path, _ in slices:
        plane = decode_pixels(load_dataset(path), path)[0]
        if planes and plane.shape != planes[0].shape:
            raise CorruptFileError(path, f"pixels of shape {plane.shape} differ from {slices[0][0].name}'s "
                                         f"{planes[0].shape} in the same series")
        planes.append(plane)
    volume = np.stack(planes, axis=1)
    affine = plane_affine(row_spacing, col_spacing, tuple(orientation), tuple(positions[0]), slice_vector)
    meta = dicom_meta(slices[0][1])
    meta.update(
        spacing_known=True,
        frames_are="slices",
        n_slices=len(slices),
        slice_warnings=warnings_,
        slice_positions_mm=[round(float(value), 4) for value in along],
    )
    spacing = (float(np.linalg.norm(slice_vector)), row_spacing, col_spacing)
    return Image(volume, affine, spacing, meta)


def _list_files(paths_or_folder) -> tuple[list[Path], Path]:
    if isinstance(paths_or_folder, str | Path):
        folder = Path(paths_or_folder)
        if not folder.is_dir():
            raise EmptyFileError(folder, "series folder not found")
        files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and _is_dicom(p)]
        return files, folder
    files = [Path(p) for p in paths_or_folder]
    return files, (files[0].parent if files else Path("."))


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _geometry_field(path: Path, ds: Dataset, name: str, length: int) -> np.ndarray:
    values = header_numbers(ds, name, path)
    if values is None or len(values) != length:
        raise UnsupportedFormatError(path, f"slice has no valid {name}; cannot place it in a volume")
    return np.array(values)
