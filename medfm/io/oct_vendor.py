"""OCT vendor files: Heidelberg ``.vol``, Zeiss Cirrus ``.img`` natively; ``.e2e``/``.fds``/``.fda`` via oct-converter.

Why two paths: ``.vol`` (Heidelberg's documented raw export) and Cirrus ``.img`` (a headerless
cube) are simple enough to read with ``struct`` and numpy, so they need no dependency.
Heidelberg ``.e2e`` and Topcon ``.fds``/``.fda`` are undocumented chunked containers; the
MIT-licensed ``oct-converter`` package reads them, but it hard-depends on opencv-python
(needs libGL at import), imageio-ffmpeg (bundles FFmpeg), matplotlib and h5py, so it is an
optional extra (``pip install 'medfm[oct-vendor]'``), imported only when such a file is read.

Geometry: these files give voxel sizes but no patient coordinates, so every affine here is
scan-local (index ``(d, h, w)`` → ``(0, 0, d·slice) + (0, h·row, 0) + (w·col, 0, 0)`` mm, with
``h`` = depth into the eye) and ``meta["geometry"] = "scan-local"``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfm.errors import MedfmReadError
from medfm.io.errors import CorruptFileError, EmptyFileError, UnsupportedFormatError
from medfm.io.images import Image, affine_2d, plane_affine

# ---------------------------------------------------------------------------------------------
# Heidelberg Spectralis raw export (.vol, "HSF-OCT-1xx")
# ---------------------------------------------------------------------------------------------
# File header layout (2048 bytes, little endian, packed), as described in Heidelberg's
# "Spectralis Special Function: Exporting Raw Data" note and the public readers built from it
# (openVol.m by Kolar/Mayer, the ImageJ "Open Heyex Raw Files" plugin); offsets checked
# against realdata/oct/*.vol (MANIFEST rows oct/...): SizeX=768 at 12, ScaleZ=0.003872 at 40,
# 'OD' at 84, BScanHdrSize=55296 at 100.
VOL_FILE_HEADER_SIZE = 2048
_VOL_HEADER = struct.Struct(
    "<12s"  # 0   Version, e.g. b"HSF-OCT-103\0"
    "iii"  # 12  SizeX (A-scans per B-scan), NumBScans, SizeZ (samples per A-scan)
    "ddd"  # 24  ScaleX (mm), Distance (mm between B-scans), ScaleZ (mm)
    "ii"  # 48  SizeXSlo, SizeYSlo
    "dd"  # 56  ScaleXSlo, ScaleYSlo (mm)
    "i"  # 72  FieldSizeSlo (degrees)
    "d"  # 76  ScanFocus (dioptres)
    "4s"  # 84  ScanPosition, b"OD" / b"OS"
    "Q"  # 88  ExamTime (Windows FILETIME)
    "i"  # 96  ScanPattern
    "i"  # 100 BScanHdrSize
    "16s16si"  # 104 ID, 120 ReferenceID, 136 PID
    "21s3x"  # 140 PatientID (+3 padding)
    "di"  # 164 DOB (Windows DATE), 172 VID
    "24s"  # 176 VisitID
    "d"  # 200 VisitDate (Windows DATE)
)
# Fields that identify a patient or a visit: their NAMES may be reported, never their values.
# The brief's list plus ExamTime/VisitDate, because dates of a patient's care are identifiers too.
VOL_PATIENT_IDENTIFIER_FIELDS = (
    "ID", "ReferenceID", "PID", "PatientID", "DOB", "VID", "VisitID", "VisitDate", "ExamTime",
)
# ScanPattern codes of the raw-export note; 1 and 2 confirmed by the real line and circle scans.
VOL_SCAN_PATTERNS = {1: "line", 2: "circle", 3: "volume (ART)", 4: "fast volume", 5: "radial"}
# Heyex stores invalid (not acquired) voxels as FLT_MAX; anything above this is treated as one.
VOL_INVALID_THRESHOLD = 1e30
# Refuse headers that would need more than this much float32 B-scan data: no real export is
# near it, and it keeps a corrupt header from asking for a huge allocation.
MAX_VOLUME_BYTES = 2 * 1024**3
_BSCAN_MAGIC = b"HSF-BS-"
_VOL_VERSION = re.compile(rb"HSF-OCT-1\d\d")


@dataclass(frozen=True)
class _VolLayout:
    """The non-identifying part of a ``.vol`` header, plus where the payloads lie."""

    version: str
    size_x: int
    n_bscans: int
    size_z: int
    scale_x: float
    distance: float
    scale_z: float
    slo_shape: tuple[int, int]  # (rows, cols) = (SizeYSlo, SizeXSlo)
    slo_scale: tuple[float, float]  # (row, col) mm
    field_size_slo_deg: int
    scan_focus_dpt: float
    laterality: str | None
    scan_pattern: int
    bscan_header_size: int
    identifier_fields: tuple[str, ...]
    file_size: int

    @property
    def bscan_block_size(self) -> int:
        return self.bscan_header_size + self.size_x * self.size_z * 4

    @property
    def first_bscan_offset(self) -> int:
        return VOL_FILE_HEADER_SIZE + self.slo_shape[0] * self.slo_shape[1]

    @property
    def expected_size(self) -> int:
        return self.first_bscan_offset + self.n_bscans * self.bscan_block_size


def _read_vol_layout(path: Path) -> _VolLayout:
    """Parse and sanity-check a ``.vol`` file header; nothing is allocated from its sizes yet."""
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    file_size = path.stat().st_size
    if file_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    with path.open("rb") as handle:
        raw = handle.read(VOL_FILE_HEADER_SIZE)
    if not raw.startswith(b"HSF-OCT-"):
        raise UnsupportedFormatError(path, f"not a Heidelberg .vol raw export: magic {raw[:12]!r}, "
                                           "expected 'HSF-OCT-1xx'")
    version = raw[:12].split(b"\0", 1)[0]
    if not _VOL_VERSION.fullmatch(version):
        raise UnsupportedFormatError(path, f"Heidelberg .vol version {version.decode('latin-1')!r} is not HSF-OCT-1xx")
    if len(raw) < VOL_FILE_HEADER_SIZE:
        raise CorruptFileError(path, f"truncated: {len(raw)} bytes, shorter than the "
                                     f"{VOL_FILE_HEADER_SIZE}-byte header")
    fields = _VOL_HEADER.unpack_from(raw)
    (_, size_x, n_bscans, size_z, scale_x, distance, scale_z, slo_x, slo_y, slo_scale_x, slo_scale_y,
     field_size, focus, position, exam_time, pattern, bscan_hdr, id_, ref_id, pid, patient_id, dob, vid,
     visit_id, visit_date) = fields
    # Only the names of the identifying fields that hold something leave this function.
    holders = {"ID": id_, "ReferenceID": ref_id, "PID": pid, "PatientID": patient_id, "DOB": dob, "VID": vid,
               "VisitID": visit_id, "VisitDate": visit_date, "ExamTime": exam_time}
    present = tuple(name for name in VOL_PATIENT_IDENTIFIER_FIELDS if _holds_value(holders[name]))

    for name, value in (("SizeX", size_x), ("NumBScans", n_bscans), ("SizeZ", size_z)):
        if value <= 0:
            raise CorruptFileError(path, f"header {name}={value}: must be positive")
    for name, value in (("SizeXSlo", slo_x), ("SizeYSlo", slo_y)):
        if value < 0:
            raise CorruptFileError(path, f"header {name}={value}: must not be negative")
    for name, value in (("ScaleX", scale_x), ("ScaleZ", scale_z)):
        if not (np.isfinite(value) and value > 0):
            raise CorruptFileError(path, f"header {name}={value}: must be a positive number of mm")
    if not (np.isfinite(distance) and distance >= 0):
        raise CorruptFileError(path, f"header Distance={distance}: must be a non-negative number of mm")
    volume_bytes = size_x * size_z * n_bscans * 4
    if volume_bytes > MAX_VOLUME_BYTES:
        raise CorruptFileError(path, f"header sizes {n_bscans} B-scans x {size_z} x {size_x} imply {volume_bytes} "
                                     f"bytes of B-scans, over the {MAX_VOLUME_BYTES}-byte cap")
    if slo_x * slo_y > MAX_VOLUME_BYTES:
        raise CorruptFileError(path, f"header SLO size {slo_y}x{slo_x} is over the {MAX_VOLUME_BYTES}-byte cap")
    if bscan_hdr < len(_BSCAN_MAGIC) or bscan_hdr > 1024**2:
        raise CorruptFileError(path, f"header BScanHdrSize={bscan_hdr}: not between {len(_BSCAN_MAGIC)} and 1 MiB")
    side = position.split(b"\0", 1)[0].decode("latin-1").strip().upper()
    layout = _VolLayout(
        version=version.decode("ascii"), size_x=size_x, n_bscans=n_bscans, size_z=size_z, scale_x=scale_x,
        distance=distance, scale_z=scale_z, slo_shape=(slo_y, slo_x), slo_scale=(slo_scale_y, slo_scale_x),
        field_size_slo_deg=field_size, scan_focus_dpt=round(float(focus), 4),
        laterality=side if side in ("OD", "OS") else None, scan_pattern=pattern, bscan_header_size=bscan_hdr,
        identifier_fields=present, file_size=file_size,
    )
    if file_size < layout.expected_size:
        raise CorruptFileError(path, f"truncated: header implies {layout.expected_size} bytes (SLO + {n_bscans} "
                                     f"B-scans), file has {file_size}")
    return layout


def _holds_value(value: Any) -> bool:
    if isinstance(value, bytes):
        return bool(value.strip(b"\0 "))
    return bool(value)


def read_heidelberg_vol(path: str | Path) -> Image:
    """Read the OCT B-scans of a Heidelberg Spectralis raw export (``.vol``, HSF-OCT-1xx).

    Returns ``(1, NumBScans, SizeZ, SizeX)`` float32 in the file's linear reflectivity, in
    [0, 1]; Heyex displays its fourth root (``value ** 0.25``, per Heidelberg's raw-export
    note). Kept linear so no display choice is baked into training data. Voxels stored as
    the invalid marker (FLT_MAX, anything > 1e30) or non-finite are set to 0 and counted in
    ``meta["invalid_voxels"]``.

    Spacing is ``(Distance, ScaleZ, ScaleX)`` mm; when Distance is 0 (a single B-scan, or a
    pattern without a B-scan step) ScaleX stands in as a nominal thickness and
    ``meta["slice_spacing_nominal"] = True``. The SLO fundus image is read by
    :func:`read_heidelberg_vol_slo`; ``meta["slo_shape"]`` gives its size. Header fields
    identifying the patient are listed by name in ``meta["patient_identifier_fields"]``;
    their values are never read into the result.

    Raises:
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: no HSF-OCT-1xx magic.
        CorruptFileError: absurd header sizes, a truncated file, or a bad B-scan magic.
    """
    path = Path(path)
    layout = _read_vol_layout(path)
    n, rows, cols = layout.n_bscans, layout.size_z, layout.size_x
    volume = np.empty((n, rows, cols), dtype=np.float32)  # bounded by the file size, checked above
    with path.open("rb") as handle:
        for index in range(n):
            offset = layout.first_bscan_offset + index * layout.bscan_block_size
            handle.seek(offset)
            magic = handle.read(len(_BSCAN_MAGIC))
            if magic != _BSCAN_MAGIC:
                raise CorruptFileError(path, f"B-scan {index} at byte {offset}: magic {magic!r}, expected 'HSF-BS-'")
            handle.seek(offset + layout.bscan_header_size)
            data = np.fromfile(handle, dtype="<f4", count=rows * cols)
            if data.size != rows * cols:  # the size check above makes this unreachable unless the file shrank
                raise CorruptFileError(path, f"B-scan {index}: truncated pixel data")
            volume[index] = data.reshape(rows, cols)
    invalid = ~np.isfinite(volume) | (volume > VOL_INVALID_THRESHOLD)
    n_invalid = int(invalid.sum())
    volume[invalid] = 0.0

    nominal = layout.distance <= 0
    slice_mm = layout.scale_x if nominal else layout.distance
    spacing = (float(slice_mm), float(layout.scale_z), float(layout.scale_x))
    meta: dict[str, Any] = {
        "modality": "OPT",
        "manufacturer": "Heidelberg Engineering",
        "format": "heidelberg_vol",
        "format_version": layout.version,
        "scan_pattern": VOL_SCAN_PATTERNS.get(layout.scan_pattern, f"unknown ({layout.scan_pattern})"),
        "laterality": layout.laterality,
        "n_bscans": n,
        "slo_shape": list(layout.slo_shape),
        "field_size_slo_deg": layout.field_size_slo_deg,
        "scan_focus_dpt": layout.scan_focus_dpt,
        "stored_dtype": "float32",
        "intensity": "linear reflectivity in [0, 1]; Heyex displays value ** 0.25",
        "invalid_voxels": n_invalid,
        "slice_spacing_nominal": nominal,
        "geometry": "scan-local",
        "trailing_bytes": layout.file_size - layout.expected_size,
        "patient_identifier_fields": list(layout.identifier_fields),
    }
    if nominal:
        meta["slice_spacing_note"] = "Distance is 0 in the header; ScaleX used as a nominal B-scan thickness"
    affine = plane_affine(spacing[1], spacing[2], slice_vector=np.array([0.0, 0.0, spacing[0]]))
    return Image(volume[None], affine, spacing, meta)


def read_heidelberg_vol_slo(path: str | Path) -> Image:
    """Read the SLO (scanning laser ophthalmoscope) fundus image stored in a ``.vol`` file.

    A separate reader rather than a ``meta`` field because it is a different image (en-face,
    its own pixel size) that a pipeline may want as the ``fundus`` modality, and ``meta``
    stays small and JSON-serialisable. Returns ``(1, SizeYSlo, SizeXSlo)`` float32 with the
    stored 0..255 values and spacing ``(ScaleYSlo, ScaleXSlo)`` mm.

    Raises:
        EmptyFileError, UnsupportedFormatError, CorruptFileError: as :func:`read_heidelberg_vol`;
        UnsupportedFormatError also when the file holds no SLO image (size 0).
    """
    path = Path(path)
    layout = _read_vol_layout(path)
    rows, cols = layout.slo_shape
    if rows == 0 or cols == 0:
        raise UnsupportedFormatError(path, "the .vol file holds no SLO image (SizeXSlo or SizeYSlo is 0)")
    with path.open("rb") as handle:
        handle.seek(VOL_FILE_HEADER_SIZE)
        pixels = np.fromfile(handle, dtype=np.uint8, count=rows * cols)
    meta = {
        "modality": "OP",  # DICOM's code for ophthalmic photography, which an SLO image is
        "manufacturer": "Heidelberg Engineering",
        "format": "heidelberg_vol_slo",
        "format_version": layout.version,
        "laterality": layout.laterality,
        "field_size_slo_deg": layout.field_size_slo_deg,
        "stored_dtype": "uint8",
        "geometry": "scan-local",
    }
    row_mm, col_mm = (float(s) for s in layout.slo_scale)
    if not (row_mm > 0 and col_mm > 0):
        meta["spacing_known"] = False
        row_mm = col_mm = 1.0
    image = pixels.reshape(1, rows, cols).astype(np.float32)
    return Image(image, affine_2d(row_mm, col_mm), (row_mm, col_mm), meta)


# ---------------------------------------------------------------------------------------------
# Zeiss Cirrus raw cube (.img)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CirrusProtocol:
    """A Cirrus scan protocol whose raw ``.img`` export has a size no other protocol has."""

    name: str
    n_bscans: int
    depth: int
    n_ascans: int
    field_mm: tuple[float, float, float]  # (B-scan direction, depth, A-scan direction)

    @property
    def n_bytes(self) -> int:
        return self.n_bscans * self.depth * self.n_ascans


# Each entry: the export file name states the protocol ("Macular Cube 512x128_<date>_..._cube_raw.img";
# 512 A-scans x 128 B-scans), the Cirrus HD-OCT user manual gives the 6 x 6 mm field and 1024
# samples over 2 mm, and the JHU AURA toolbox's read_img.m lists the same byte counts
# ("Cube: [512 x 128 x 1024] : 67108864", "Cube: [200 x 200 x 1024] : 40960000").
# Macular and Optic Disc Cube 200x200 share one size (and field), so one entry covers both.
CIRRUS_PROTOCOLS = (
    CirrusProtocol("Cube 512x128", n_bscans=128, depth=1024, n_ascans=512, field_mm=(6.0, 2.0, 6.0)),
    CirrusProtocol("Cube 200x200 (Macular or Optic Disc)", n_bscans=200, depth=1024, n_ascans=200,
                   field_mm=(6.0, 2.0, 6.0)),
)


def read_zeiss_img(path: str | Path, *, flip_bscans: bool = True) -> Image:
    """Read a Zeiss Cirrus raw cube export (``*_cube_raw.img`` / ``*_cube_z.img``).

    The file is headerless uint8, so the protocol is inferred from its size against
    :data:`CIRRUS_PROTOCOLS`. Layout (as in every public reader: AURA's octCirrusReader.m,
    readCirrusOct): B-scan after B-scan, each ``depth`` rows of ``n_ascans`` bytes. Each
    B-scan is stored rotated by 180° (deepest row first, A-scans right to left); with
    ``flip_bscans`` (default) both axes are flipped back so row 0 is the vitreous side and
    columns run as Cirrus displays them. B-scan order is kept as stored (AURA also reverses
    it, the other public readers do not; no Zeiss document settles it), recorded in
    ``meta["bscan_order"]``. Spacing is the protocol's nominal field over the sample count
    (``meta["spacing_nominal"] = True``). The file NAME carries the patient ID in Cirrus
    exports, so it is never parsed.

    Raises:
        EmptyFileError: zero-byte file.
        UnsupportedFormatError: a size that matches no known protocol (names the size).
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    protocol = next((p for p in CIRRUS_PROTOCOLS if p.n_bytes == size), None)
    if protocol is None:
        known = ", ".join(f"{p.name}: {p.n_bytes}" for p in CIRRUS_PROTOCOLS)
        raise UnsupportedFormatError(path, f"{size} bytes matches no known Zeiss Cirrus raw cube protocol ({known} "
                                           "bytes); an Analyze/NIfTI .img pair is not read here")
    cube = np.fromfile(path, dtype=np.uint8).reshape(protocol.n_bscans, protocol.depth, protocol.n_ascans)
    if flip_bscans:
        cube = cube[:, ::-1, ::-1]
    spacing = tuple(float(mm / n) for mm, n in zip(protocol.field_mm, cube.shape, strict=True))
    meta = {
        "modality": "OPT",
        "manufacturer": "Carl Zeiss Meditec",
        "format": "zeiss_img",
        "protocol": protocol.name,
        "n_bscans": protocol.n_bscans,
        "stored_dtype": "uint8",
        "spacing_nominal": True,
        "bscans_flipped": flip_bscans,
        "bscan_order": "as stored",
        "geometry": "scan-local",
    }
    affine = plane_affine(spacing[1], spacing[2], slice_vector=np.array([0.0, 0.0, spacing[0]]))
    return Image(np.ascontiguousarray(cube, dtype=np.float32)[None], affine, spacing, meta)


# ---------------------------------------------------------------------------------------------
# .e2e / .fds / .fda through the optional oct-converter package, and the dispatcher
# ---------------------------------------------------------------------------------------------
# (oct_converter.readers class, what to call the file, manufacturer)
_CONVERTER_FORMATS = {
    ".e2e": ("E2E", "Heidelberg .e2e", "Heidelberg Engineering"),
    ".fds": ("FDS", "Topcon .fds", "Topcon"),
    ".fda": ("FDA", "Topcon .fda", "Topcon"),
}
_EXTRA_REASON = ("needs the optional extra: pip install 'medfm[oct-vendor]' (oct-converter; kept optional because "
                 "it pulls opencv-python, imageio-ffmpeg, matplotlib and h5py)")
_LATERALITY = {"R": "OD", "L": "OS", "OD": "OD", "OS": "OS"}


def read_oct_vendor(path: str | Path, *, volume_index: int | None = None) -> Image:
    """Read any supported OCT vendor file, chosen by content (HSF-OCT magic) then extension.

    ``.vol`` → :func:`read_heidelberg_vol`; ``.img`` → :func:`read_zeiss_img`; ``.e2e``,
    ``.fds``, ``.fda`` → oct-converter (optional extra), converted to ``(1, D, H, W)`` float32
    with oct-converter's intensities (E2E: its log transform to [0, 1]; Topcon: stored
    uint16/uint8 values). ``volume_index`` picks one volume of an ``.e2e`` holding several.

    Raises:
        UnsupportedFormatError: unknown extension, the extra missing, or several volumes and
            no ``volume_index``.
        EmptyFileError, CorruptFileError: as the readers do.
    """
    path = Path(path)
    if not path.is_file():
        raise MedfmReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise EmptyFileError(path, "file is empty (0 bytes)")
    with path.open("rb") as handle:
        head = handle.read(8)
    suffix = path.suffix.lower()
    if head.startswith(b"HSF-OCT") or suffix == ".vol":
        return read_heidelberg_vol(path)
    if suffix == ".img":
        return read_zeiss_img(path)
    if suffix in _CONVERTER_FORMATS:
        return _read_with_oct_converter(path, suffix, volume_index)
    raise UnsupportedFormatError(path, f"not an OCT vendor file medfm reads (.vol, .img, .e2e, .fds, .fda), "
                                       f"extension {suffix or '(none)'!r}")


def _read_with_oct_converter(path: Path, suffix: str, volume_index: int | None) -> Image:
    class_name, label, manufacturer = _CONVERTER_FORMATS[suffix]
    try:
        from oct_converter import readers  # lazy: optional extra with heavy dependencies
    except ImportError:
        raise UnsupportedFormatError(path, f"{label} {_EXTRA_REASON}") from None
    try:
        result = getattr(readers, class_name)(path).read_oct_volume()
    except Exception as err:  # oct-converter raises bare ValueError/construct errors/... on bad files
        raise CorruptFileError(path, f"oct-converter could not read this {label} file ({type(err).__name__}: {err})"
                               ) from None
    volumes = [v for v in (result if isinstance(result, list) else [result]) if v is not None]
    if not volumes:
        raise EmptyFileError(path, f"oct-converter found no OCT volume in this {label} file")
    if volume_index is None:
        if len(volumes) > 1:
            raise UnsupportedFormatError(path, f"{label} holds {len(volumes)} OCT volumes; pass volume_index "
                                               f"(0..{len(volumes) - 1})")
        volume_index = 0
    if not 0 <= volume_index < len(volumes):
        raise UnsupportedFormatError(path, f"volume_index {volume_index} out of range: {len(volumes)} volume(s)")
    return oct_volume_to_image(volumes[volume_index], path, suffix, manufacturer)


def oct_volume_to_image(volume: Any, path: Path, suffix: str, manufacturer: str) -> Image:
    """Convert an ``oct_converter.image_types.OCTVolumeWithMetaData`` to an :class:`Image`.

    ``volume.volume`` is a list of ``(H, W)`` B-scans. ``volume.pixel_spacing`` is ordered
    differently by oct-converter's readers (read from its 0.7.0 source): E2E gives
    ``[col, row, slice]`` where only ``row`` (axial) comes from the file and ``col``/``slice``
    are its defaults (0.01 / 0.05 mm); FDS/FDA give ``[col, slice, row]``, all from the file.
    Patient fields (``patient_id``, names, ``DOB``, dates, ``metadata``) are not copied.
    """
    slices = [np.asarray(b) for b in (volume.volume or [])]
    if not slices:
        raise EmptyFileError(path, "oct-converter returned a volume without B-scans")
    shapes = {s.shape for s in slices}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise CorruptFileError(path, f"oct-converter returned B-scans of differing or non-2D shapes {sorted(shapes)}")
    stack = np.stack(slices).astype(np.float32)
    if not np.isfinite(stack).all():
        raise CorruptFileError(path, "oct-converter returned non-finite intensities")
    meta: dict[str, Any] = {
        "modality": "OPT",
        "manufacturer": manufacturer,
        "format": f"oct_converter{suffix.replace('.', '_')}",
        "n_bscans": int(stack.shape[0]),
        "stored_dtype": str(slices[0].dtype),
        "laterality": _LATERALITY.get(str(volume.laterality or "").upper()),
        "geometry": "scan-local",
    }
    raw_spacing = getattr(volume, "pixel_spacing", None)
    if raw_spacing is None:
        spacing = (1.0, 1.0, 1.0)
        meta["spacing_known"] = False
    else:
        values = [float(v) for v in raw_spacing]
        if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
            raise CorruptFileError(path, f"oct-converter pixel_spacing {raw_spacing!r} is not 3 positive numbers")
        if suffix == ".e2e":
            col, row, slc = values
            meta["spacing_nominal_axes"] = ["slice", "col"]  # oct-converter's defaults, not the file's
        else:
            col, slc, row = values
        spacing = (slc, row, col)
    affine = plane_affine(spacing[1], spacing[2], slice_vector=np.array([0.0, 0.0, spacing[0]]))
    return Image(stack[None], affine, spacing, meta)


__all__ = [
    "CIRRUS_PROTOCOLS",
    "VOL_PATIENT_IDENTIFIER_FIELDS",
    "CirrusProtocol",
    "oct_volume_to_image",
    "read_heidelberg_vol",
    "read_heidelberg_vol_slo",
    "read_oct_vendor",
    "read_zeiss_img",
]
