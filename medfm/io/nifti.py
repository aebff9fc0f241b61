"""NIfTI-1/2 volumes (.nii, .nii.gz) via nibabel."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import LPS_TO_RAS, Image

# NIfTI voxel axes (i, j, k) become array axes (w, h, d), matching the (slice, row, col)
# layout of DICOM volumes; the affine's columns are permuted the same way.
_IJK_TO_DHW = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def read_nifti(path: str | Path) -> Image:
    """Read a 2D, 3D or 4D NIfTI image into a ``(C, D, H, W)`` volume.

    The data are ``nibabel``'s scaled values (``scl_slope``/``scl_inter`` applied),
    float32; a 4D file's fourth axis (time, echoes, ...) becomes the channel axis.
    Voxel axes ``(i, j, k)`` are stored as ``(w, h, d)``, i.e. the array is the data
    transposed to ``(k, j, i)``. The affine is the file's (sform, else qform) converted
    from NIfTI's RAS to DICOM's LPS, so DICOM and NIfTI volumes share one convention.

    Raises:
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: not a NIfTI file, or more than 4 dimensions.
        CorruptFileError: truncated or undecodable data, or non-finite values in the affine.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if not _has_nifti_magic(path):
        raise UnsupportedFormatError(path, "not a NIfTI file: no n+1/ni1/n+2/ni2 magic in the header")
    try:
        img = nib.load(path)
    except ImageFileError as err:
        raise CorruptFileError(path, f"NIfTI header could not be parsed ({err})") from None
    except (OSError, EOFError, ValueError) as err:
        raise CorruptFileError(path, f"NIfTI header could not be read ({err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(path, f"{type(img).__name__} is not NIfTI")
    shape = img.shape
    if len(shape) > 4 and all(size == 1 for size in shape[4:]):
        shape = shape[:4]
    if len(shape) > 4:
        raise UnsupportedFormatError(path, f"{len(img.shape)}D NIfTI {img.shape}; at most 4D is read")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except (OSError, EOFError, ValueError, RuntimeError) as err:  # zlib/short reads surface as these
        raise CorruptFileError(path, f"NIfTI data could not be read, file truncated? ({err})") from None
    data = data.reshape(data.shape + (1,) * (4 - data.ndim))  # (i, j, k, c)
    array = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))
    affine_ras = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine_ras).all():
        raise CorruptFileError(path, "affine has non-finite values")
    affine = LPS_TO_RAS @ affine_ras @ _IJK_TO_DHW
    header = img.header
    meta = {
        "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
        "stored_dtype": str(header.get_data_dtype()),
        "byte_order": "big" if header.endianness == ">" else "little",
        "file_shape": [int(s) for s in img.shape],
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "spacing_known": True,
    }
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))  # (d, h, w) voxel size
    return Image(array, affine, spacing, meta)


def _has_nifti_magic(path: Path) -> bool:
    """NIfTI-1 magic at byte 344 or NIfTI-2 magic at byte 4, in the file or its gzip stream.

    Raises:
        CorruptFileError: a gzip stream too short or damaged to hold a header.
    """
    with path.open("rb") as handle:
        head = handle.read(348)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as handle:
                head = handle.read(348)
        except (OSError, EOFError) as err:
            raise CorruptFileError(path, f"gzip stream is truncated or damaged ({err})") from None
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")
