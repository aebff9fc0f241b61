"""The :class:`Image` every image reader returns, and photographs (PNG/JPEG/TIFF/GIF) via Pillow."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError

# LPS (DICOM) <-> RAS (NIfTI, MONAI default): negate the first two world axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Largest float32 array an image reader returns (512 x 512 x 2048 voxels): a header that asks
# for more is refused before anything is allocated, so a corrupt size cannot exhaust memory.
MAX_ARRAY_BYTES = 2 * 1024**3


class ClippedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks the OS for more than the bytes left.

    Parsers trust length fields (a DICOM element's, a PNG chunk's) and ``read(length)``;
    a plain file object allocates ``length`` bytes before finding they are not there,
    so one flipped byte could ask for gigabytes. Here the read is cut to the file's end.
    """

    def __init__(self, path: str | Path):
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


@dataclass(frozen=True)
class Image:
    """A 2D image or 3D volume, channel-first float32, with its geometry.

    Attributes:
        array: ``(C, H, W)`` for a 2D image, ``(C, D, H, W)`` for a volume or multi-frame
            object; C is 1 (grey) or 3 (RGB), or the time points of a 4D NIfTI.
        affine: 4x4 float64 mapping a spatial index (the array index without its channel
            axis; for 2D ``(h, w, 0)``) to patient coordinates in mm, LPS as in DICOM.
        spacing: voxel size in mm per spatial axis, in array order: ``(row, col)`` for 2D,
            ``(slice, row, col)`` for volumes.
        meta: non-identifying fields (modality, manufacturer, model, photometric, ...);
            never a patient identifier value.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 4


def plane_affine(
    row_spacing: float,
    col_spacing: float,
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    slice_vector: np.ndarray | None = None,
) -> np.ndarray:
    """Affine of a ``(d, h, w)`` (or ``(h, w, 0)``) index to LPS mm, from DICOM plane geometry.

    ``orientation`` is ImageOrientationPatient: the first triple is the direction of
    increasing column index (``w``), the second of increasing row index (``h``). The
    default is DICOM's identity orientation, used where a file gives no geometry.
    """
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    if slice_vector is None:
        slice_vector = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, 0] = slice_vector
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = row_dir * col_spacing
    affine[:3, 3] = origin
    return affine


def affine_2d(row_spacing: float, col_spacing: float, orientation=None, origin=None) -> np.ndarray:
    """Affine of a 2D image's ``(h, w, 0)`` index: rows, columns, then the plane normal."""
    orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) if orientation is None else orientation
    volume = plane_affine(row_spacing, col_spacing, orientation, (0.0, 0.0, 0.0) if origin is None else origin)
    # reorder columns from (d, h, w) to (h, w, d)
    return volume[:, [1, 2, 0, 3]]


def to_metatensor(image: Image):
    """Wrap an :class:`Image` as a MONAI ``MetaTensor`` (affine converted to MONAI's RAS).

    A 2D image gets MONAI's 2D (3x3) affine; a volume the 4x4 one.
    """
    import torch
    from monai.data import MetaTensor

    affine = LPS_TO_RAS @ image.affine
    if not image.is_volume:
        affine = affine[np.ix_([0, 1, 3], [0, 1, 3])]
    meta = {key: value for key, value in image.meta.items() if isinstance(value, str | int | float | bool)}
    meta["space"] = "RAS"
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(image.array)), affine=torch.as_tensor(affine), meta=meta)


_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff", "GIF": "gif", "BMP": "bmp"}


def read_photo(path: str | Path) -> Image:
    """Read a PNG, JPEG, TIFF or GIF image (one frame) with Pillow.

    Grey → ``(1, H, W)``, RGB/RGBA/palette → ``(3, H, W)`` (alpha dropped); values are
    the stored ones (16-bit PNG keeps 0..65535). Pixel size is unknown in these formats,
    so spacing is 1.0 with ``meta["spacing_known"] = False``. An RGB image whose three
    channels are identical (grey saved as RGB) has ``meta["grey_as_rgb"] = True``.

    Raises:
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: not an image Pillow recognises, or more than one frame.
        CorruptFileError: the image is truncated or its data cannot be decoded, or its
            header declares more pixels than Pillow's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS``) or than :data:`MAX_ARRAY_BYTES` holds.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings(), ClippedReader(path) as handle:
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # _check_declared_size refuses it
            with PILImage.open(handle) as pil:
                fmt = pil.format or ""
                _check_declared_size(pil, path)
                n_frames = int(getattr(pil, "n_frames", 1))
                if n_frames > 1:
                    raise UnsupportedFormatError(path, f"{fmt} with {n_frames} frames; only single-frame images "
                                                       "are read")
                pil.load()
                mode = pil.mode
                pixels = _pil_to_channels(pil, path)
    except UnidentifiedImageError:
        raise UnsupportedFormatError(path, "not an image format Pillow recognises") from None
    except PILImage.DecompressionBombError as err:  # raised by Image.open, before our own check
        raise CorruptFileError(path, f"image size over Pillow's decompression-bomb limit ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's errors for truncated/bad data
        raise CorruptFileError(path, f"image data could not be decoded ({err})") from None

    grey_as_rgb = pixels.shape[0] == 3 and bool((pixels[0] == pixels[1]).all() and (pixels[1] == pixels[2]).all())
    meta = {
        "format": _PIL_FORMATS.get(fmt, fmt.lower()),
        "mode": mode,
        "stored_dtype": str(pixels.dtype),
        "spacing_known": False,
        "grey_as_rgb": grey_as_rgb,
    }
    return Image(pixels.astype(np.float32), affine_2d(1.0, 1.0), (1.0, 1.0), meta)


def _check_declared_size(pil: PILImage.Image, path: Path) -> None:
    """Refuse a header whose width x height is absurd, before Pillow allocates the image."""
    width, height = pil.size
    pixels = width * height
    if width <= 0 or height <= 0:
        raise CorruptFileError(path, f"image size {width}x{height}: must be positive")
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:
        raise CorruptFileError(path, f"image size {width}x{height} is over Pillow's decompression-bomb limit "
                                     f"of {limit} pixels")
    if pixels * 3 * 4 > MAX_ARRAY_BYTES:  # at most 3 float32 channels come back
        raise CorruptFileError(path, f"image size {width}x{height} would need more than {MAX_ARRAY_BYTES} bytes")


def _pil_to_channels(pil: PILImage.Image, path: Path) -> np.ndarray:
    """Pillow image → channel-first array of its stored values (not yet float)."""
    mode = pil.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(pil)[None].astype(np.uint8) if mode == "1" else np.asarray(pil)[None]
    if mode == "LA":
        return np.asarray(pil)[None, :, :, 0]
    if mode in ("P", "PA"):
        pil = pil.convert("RGBA" if "transparency" in pil.info or mode == "PA" else "RGB")
    elif mode not in ("RGB", "RGBA"):
        if mode not in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise UnsupportedFormatError(path, f"Pillow image mode {mode!r} is not supported")
        pil = pil.convert("RGB")
    return np.moveaxis(np.asarray(pil)[:, :, :3], -1, 0)
