"""Similar-case queries: a file, a text or an indexed study → the most similar earlier cases.

``CaseSearch`` joins a saved :class:`~medfm.heads.retrieval.CaseIndex` with the checkpoint
that built it (refused if the checkpoint changed since: its vectors would live in
another space). A query in any modality searches cases of any modality: an ECG finds the
CXRs whose embeddings lie nearest, a text finds the images it describes.

A query's own patient is left out of the results unless asked: for a file, the
patient is recognised by the DICOM Patient ID, keyed with the index's salt exactly like
the indexed cases; the ID itself is never kept or returned.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch

from medfm.data.dataset import READERS
from medfm.data.transforms import preprocess_study
from medfm.errors import MedfmError, MedfmReadError
from medfm.heads.cases import THUMBNAILS, IndexMismatchError, checkpoint_fingerprint, patient_key
from medfm.heads.retrieval import Case, CaseIndex, Hit
from medfm.io import detect_format, keep_sections, read_photo
from medfm.io.archive import MAX_BYTES, extract_zip
from medfm.keys import IMAGE_MODALITIES, Modality
from medfm.models import MultimodalModel

# DICOM Modality (0008,0060) → medfm modality.
DICOM_MODALITIES = {"CR": Modality.CXR, "DX": Modality.CXR, "OPT": Modality.OCT, "OP": Modality.FUNDUS,
                    "CT": Modality.CT}
_OCT_VENDOR = ("heidelberg_vol", "zeiss_img", "heidelberg_e2e", "topcon_fds", "topcon_fda")
_PHOTOS = ("png", "jpeg", "tiff", "gif")


class QueryError(MedfmReadError):
    """A query file whose modality cannot be told, or that this index's model does not read."""


@dataclass(frozen=True)
class Query:
    """A unit vector to search with, what it came from, and whose studies to leave out."""

    vector: np.ndarray
    kind: str  # "text", "file" or "case"
    modality: str  # of the query itself: "report" for a text
    patient_key: str | None = None


class CaseSearch:
    """A saved index and the model that embeds queries into its space."""

    def __init__(self, index: CaseIndex, model: MultimodalModel, index_dir: Path):
        self.index = index
        self.model = model.eval()
        self.index_dir = index_dir

    @classmethod
    def open(cls, index_dir: str | Path, model_dir: str | Path | None = None) -> CaseSearch:
        """Load an index and its model (the checkpoint recorded at build time unless ``model_dir`` is given).

        Raises:
            IndexFileError: the index is incomplete or its files changed.
            IndexMismatchError: the checkpoint is not the one the index was built with.
        """
        index_dir = Path(index_dir)
        index = CaseIndex.load(index_dir)
        model_dir = Path(model_dir or index.info.get("model", ""))
        if not model_dir.is_dir():
            raise IndexMismatchError(f"{index_dir}: its model checkpoint {model_dir} is not there; pass --model")
        if checkpoint_fingerprint(model_dir) != index.info.get("model_sha256"):
            raise IndexMismatchError(f"{model_dir}: not the checkpoint {index_dir} was built with (fingerprints "
                                     "differ); rebuild the index with `medfm index build --fresh`")
        return cls(index, MultimodalModel.from_pretrained(model_dir), index_dir)

    @property
    def modalities(self) -> list[str]:
        """Query modalities this model embeds."""
        return [str(m) for m in self.model.modalities]

    # -- queries -------------------------------------------------------------------------------

    @torch.no_grad()
    def text_query(self, text: str) -> Query:
        """A finding in words ("small left pleural effusion"), embedded by the report encoder."""
        if not text.strip():
            raise MedfmError("text query is empty")
        if Modality.REPORT not in self.model.modalities:
            raise MedfmError("this index's model has no report encoder; it cannot search by text")
        vector = self.model.encode(Modality.REPORT, [text])[0].numpy()
        return Query(vector, "text", str(Modality.REPORT))

    @torch.no_grad()
    def file_query(self, path: str | Path, modality: str | None = None, max_unpacked_bytes: int = MAX_BYTES) -> Query:
        """A study on disk: DICOM file or series folder, WFDB record, PNG/JPEG, NIfTI, OCT vendor file, or a zip.

        ``modality`` is needed only where the file cannot tell (NIfTI; a photo is taken as a
        fundus photograph if in colour, a radiograph if grey). A zip may expand to at most
        ``max_unpacked_bytes``.

        Raises:
            QueryError: modality unknown, or one this model has no encoder for.
            MedfmReadError: the file cannot be read (subclasses name the reason).
        """
        path = Path(path)
        if path.is_file() and path.suffix.lower() == ".zip":
            with tempfile.TemporaryDirectory(prefix="medfm-query-") as tmp:
                study = _study_in(extract_zip(path, tmp, max_bytes=max_unpacked_bytes), path)
                if study.is_file() and study.suffix.lower() == ".zip":  # unpacking on would have no depth bound
                    raise QueryError(path, "holds another zip; zip the study itself, once")
                return self.file_query(study, modality)
        modality = Modality(modality) if modality else modality_of_file(path)
        if modality not in self.model.modalities:
            raise QueryError(path, f"{modality} query, but this index's model embeds only "
                                   f"{', '.join(self.modalities)}")
        value = read_query_file(modality, path)
        tensor = preprocess_study(path, self.model.input_spec(modality), value,
                                  lambda read: self.model.preprocess(modality, read))
        vector = self.model.encode(modality, tensor.unsqueeze(0))[0].numpy()
        pid = dicom_patient_id(path)
        key = None if pid is None else patient_key(self.index.info["patient_salt"], pid)
        return Query(vector, "file", str(modality), key)

    def case_query(self, study_id: str, modality: str | None = None) -> Query:
        """An indexed study as the query (its stored vector); its patient is that study's patient."""
        found = self.index.find(study_id, modality)
        if not found:
            raise MedfmError(f"study {study_id!r}{f' ({modality})' if modality else ''} is not in the index")
        if len(found) > 1:
            raise MedfmError(f"study {study_id!r} has {', '.join(c.modality for _, c in found)} in the index; "
                             "say which modality to search with")
        case_id, case = found[0]
        return Query(self.index.vector(case_id), "case", case.modality, case.patient_key)

    def search(self, query: Query, k: int = 10, *, include_own_patient: bool = False,
               cohorts: Collection[str] | None = None, **filters) -> list[Hit]:
        """The ``k`` most similar cases; ``filters``: modality, site, device, date_from, date_to.

        ``cohorts``: only cases of these cohorts (None: of every cohort), chosen inside the search.
        """
        exclude = None if include_own_patient else query.patient_key
        return self.index.search(query.vector, k, exclude_patient=exclude, cohorts=cohorts, **filters)

    def thumbnail_path(self, case: Case) -> Path | None:
        """The case's thumbnail file, if it has one; the name comes from the index, never from a request."""
        if not case.thumbnail:
            return None
        path = self.index_dir / THUMBNAILS / Path(case.thumbnail).name
        return path if path.is_file() else None


def hit_json(hit: Hit) -> dict:
    """One result as ``medfm search --json`` and the HTTP API return it: id, similarity and the case's fields.

    The patient key is left out: a pseudonym, but one that links a patient's cases.
    """
    fields = {k: v for k, v in hit.case.__dict__.items() if k != "patient_key"}
    return {"id": hit.id, "score": round(hit.score, 6), **fields}


def report_excerpt(report: str | None, length: int = 160) -> str:
    """A report's findings and impression on one line, cut at ``length`` characters."""
    if not report:
        return ""
    text = " ".join(keep_sections(report, ["findings", "impression"]).split())
    return text if len(text) <= length else text[:length - 1].rstrip() + "…"


def modality_of_file(path: str | Path) -> Modality:
    """Which modality a query file holds, from its content.

    Raises:
        QueryError: a format that does not say (NIfTI), or a DICOM modality medfm does not index.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "wfdb":
        return Modality.ECG
    if fmt in _OCT_VENDOR:
        return Modality.OCT
    if fmt == "dicom_series":
        return Modality.CT
    if fmt == "dicom":
        try:
            code = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
        except Exception as err:  # pydicom raises many types for a damaged header
            raise QueryError(path, f"DICOM header unreadable ({err})") from None
        if code not in DICOM_MODALITIES:
            raise QueryError(path, f"DICOM modality {code or 'missing'!r} is not one medfm indexes "
                                   f"({', '.join(DICOM_MODALITIES)})")
        return DICOM_MODALITIES[code]
    if fmt in _PHOTOS:
        photo = read_photo(path)
        grey = photo.array.shape[0] == 1 or photo.meta.get("grey_as_rgb", False)
        return Modality.CXR if grey else Modality.FUNDUS
    raise QueryError(path, f"a {fmt} file does not say its modality; give one of "
                           f"{', '.join(str(m) for m in IMAGE_MODALITIES)}")


def read_query_file(modality: Modality, path: Path):
    """The reader output for a query: the cohort readers, plus radiographs exported as PNG/JPEG."""
    if modality == Modality.CXR and path.is_file() and detect_format(path) in _PHOTOS:
        return read_photo(path)
    return READERS[modality](path)


def dicom_patient_id(path: Path) -> str | None:
    """Patient ID of a DICOM file (or a series folder's first file), read to key it, never kept."""
    if path.is_dir():
        path = next((p for p in sorted(path.iterdir()) if p.is_file()), path)
    if not path.is_file():
        return None
    try:
        value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID")
    except Exception:  # not DICOM (a PNG, a WFDB header): no patient to recognise
        return None
    return str(value) if value else None


def _study_in(folder: Path, archive: Path) -> Path:
    """The one study an unpacked upload holds: a WFDB record, a DICOM series folder, or a single file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    headers = [p for p in files if p.suffix.lower() == ".hea"]
    if len(headers) == 1:
        return headers[0].with_suffix("")
    if len(files) == 1:
        return files[0]
    folders = {p.parent for p in files}
    if len(folders) == 1 and files:
        return folders.pop()  # several files in one folder: a DICOM series
    raise QueryError(archive, f"holds {len(files)} files in {len(folders)} folders; expected one study "
                              "(one file, one WFDB record, or one folder of DICOM slices)")
