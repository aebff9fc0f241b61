"""NIfTI-1/2 volumes (.nii, .nii.gz) via nibabel."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import LPS_TO_RAS, MAX_ARRAY_BYTES, Image

# Deflate cannot expand data more than about 1032 times: a gzip file whose header declares
# more is lying, and nibabel would allocate the declared size before finding out.
_MAX_DEFLATE_RATIO = 1032

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

    The size the header declares is checked before any voxel is read: the file (or, for
    ``.nii.gz``, what its compressed stream can expand to) must hold it, and the float32
    result must fit :data:`~medfm.io.images.MAX_ARRAY_BYTES`.

    Raises:
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: not a NIfTI file, more than 4 dimensions, or voxels that are
            not real numbers (RGB, complex).
        CorruptFileError: an invalid header (dimensions, data type, offset, scaling),
            truncated or undecodable data, sizes the file cannot hold, infinite values (NaN
            is kept: float images use it for "no data"), non-finite values in the affine, or
            an affine that gives an axis infinite length, or zero length to one of more than
            one voxel.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    if not _has_nifti_magic(path):
        raise UnsupportedFormatError(path, "not a NIfTI file: no n+1/ni1/n+2/ni2 magic in the header")
    _check_extensions(path)
    try:
        img = nib.load(path)
        shape, dtype, offset = img.shape, img.header.get_data_dtype(), int(img.header.get_data_offset())
    except (ImageFileError, HeaderDataError) as err:
        raise CorruptFileError(path, f"NIfTI header could not be parsed ({err})") from None
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise CorruptFileError(path, f"NIfTI header could not be read ({err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(path, f"{type(img).__name__} is not NIfTI")
    if len(shape) > 4 and all(size == 1 for size in shape[4:]):
        shape = shape[:4]
    if len(shape) > 4:
        raise UnsupportedFormatError(path, f"{len(img.shape)}D NIfTI {img.shape}; at most 4D is read")
    if dtype.kind not in "biuf":  # RGB/RGBA are structured, complex has no float32 value
        raise UnsupportedFormatError(path, f"NIfTI data type {dtype} (datatype {int(img.header['datatype'])}) is not "
                                           "read: only integer and real voxels are")
    _check_declared_size(path, shape, dtype, offset)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except HeaderDataError as err:
        raise CorruptFileError(path, f"NIfTI header could not be applied to the data ({err})") from None
    except (OSError, EOFError, ValueError, RuntimeError, zlib.error) as err:  # zlib/short reads surface as these
        raise CorruptFileError(path, f"NIfTI data could not be read, file truncated? ({err})") from None
    if np.isinf(data).any():
        raise CorruptFileError(path, "data hold infinite values (corrupt float data, or scl_slope/scl_inter "
                                     "overflowing float32)")
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
    bad = [axis for axis, (mm, size) in enumerate(zip(spacing, array.shape[1:], strict=True))
           if not np.isfinite(mm) or (mm == 0 and size > 1)]
    if bad:
        raise CorruptFileError(path, f"affine gives voxel axes {bad} (d, h, w) zero or infinite length: {spacing} mm")
    return Image(array, affine, spacing, meta)


def _check_declared_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
    """Refuse dimensions the file cannot hold, before nibabel allocates them."""
    if not shape or min(shape) <= 0:
        raise CorruptFileError(path, f"header dimensions {tuple(shape)}: every one must be positive")
    voxels = math.prod(shape)
    if voxels * 4 > MAX_ARRAY_BYTES:
        raise CorruptFileError(path, f"header dimensions {tuple(shape)} need {voxels * 4} bytes as float32, over "
                                     f"the {MAX_ARRAY_BYTES}-byte cap")
    data_bytes = voxels * dtype.itemsize
    size = path.stat().st_size
    with path.open("rb") as handle:
        zipped = handle.read(2) == b"\x1f\x8b"
    if zipped and data_bytes > size * _MAX_DEFLATE_RATIO:
        raise CorruptFileError(path, f"header dimensions {tuple(shape)} of {dtype} need {data_bytes} bytes; a "
                                     f"{size}-byte gzip file cannot expand to that")
    if not zipped and offset + data_bytes > size:
        raise CorruptFileError(path, f"truncated: header dimensions {tuple(shape)} of {dtype} at offset {offset} "
                                     f"need {offset + data_bytes} bytes, the file has {size}")


def _check_extensions(path: Path) -> None:
    """Refuse header extensions that run past the data offset or the file, before nibabel reads them.

    nibabel reads each extension's declared size in one go; a corrupt size would be allocated.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        zipped = handle.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if zipped else path.open("rb") as handle:
            head = handle.read(544)
            nifti2 = head[4:7] in (b"n+2", b"ni2")
            header_size, offset_format, offset_at = (540, "q", 168) if nifti2 else (348, "f", 108)
            endian = "<" if head[:4] == struct.pack("<i", header_size) else ">"
            if len(head) < header_size + 4 or head[header_size] == 0:
                return  # no extension flag
            (vox_offset,) = struct.unpack_from(endian + offset_format, head, offset_at)
            position = header_size + 4
            end = size * _MAX_DEFLATE_RATIO if zipped else size
            if math.isfinite(vox_offset) and vox_offset >= position:  # below it, nibabel reads to the end of file
                end = min(end, int(vox_offset))
            handle.seek(position)
            while end - position >= 16:
                definition = handle.read(8)
                if len(definition) < 8:
                    raise CorruptFileError(path, f"header extension at byte {position} is truncated")
                (extension_size,) = struct.unpack(endian + "i", definition[:4])
                if extension_size < 16 or position + extension_size > end:
                    raise CorruptFileError(path, f"header extension of {extension_size} bytes at byte {position} "
                                                 f"runs past the data offset or the file (byte {end})")
                position += extension_size
                handle.seek(position)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptFileError(path, f"header extensions could not be read ({err})") from None


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
        except (OSError, EOFError, zlib.error) as err:
            raise CorruptFileError(path, f"gzip stream is truncated or damaged ({err})") from None
    return head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")
