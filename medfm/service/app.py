"""The similar-case search API, the page that uses it, and ``serve`` that runs both.

One process holds one :class:`~medfm.heads.query.CaseSearch` (an index and its model).
The endpoints that touch it are plain functions, so FastAPI runs them in its threadpool
and the event loop keeps accepting requests; one lock serialises every use of the model
and the index: torch already spreads one query over the cores, two at once would only
compete for them, and the index's SQLite connection is shared.

Nothing in a response identifies a patient: cases leave the server through
:func:`~medfm.heads.query.hit_json`, which drops the patient key, and a query file's
Patient ID is used only to leave that patient's own studies out of the results.
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoints' annotations, which
# refer to local names (settings, the bearer scheme) that a string annotation could not reach.
import ipaddress
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field, SecretStr

from medfm import __version__
from medfm.config import Config
from medfm.errors import MedfmError
from medfm.heads.query import CaseSearch, Query, hit_json, report_excerpt
from medfm.heads.retrieval import Case, Hit
from medfm.keys import Modality
from medfm.service.security import BodyLimit, SecurityHeaders, bearer_token_check, uvicorn_log_config
from medfm.service.uploads import public_message, save_upload

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 100
MAX_CASE_ID = 2**63 - 1  # SQLite's integer range: a larger id is a 422, not an overflow
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the text fields around an upload

log = logging.getLogger(__name__)


class ServiceSettings(Config):
    """How the service admits requests.

    Attributes:
        token: the access token; None leaves the service open (``serve`` allows that on loopback only).
        max_upload_bytes: the largest query file accepted (a zip counts as uploaded, not unpacked).
        max_unpacked_bytes: the most an uploaded zip may expand to on disk.
        max_text_chars: the longest text query.
        upload_dir: where uploads are written while they are searched (default: the system's temp folder).
        torch_threads: threads for one query's embedding (default: see :func:`torch_threads`).
    """

    token: SecretStr | None = None
    max_upload_bytes: int = Field(200 * 1024**2, ge=1)
    max_unpacked_bytes: int = Field(1024**3, ge=1)
    max_text_chars: int = Field(2000, ge=1)
    upload_dir: Path | None = None
    torch_threads: int | None = Field(None, ge=1)


def create_app(search: CaseSearch, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``search``: the API under ``/api``, the page at ``/``."""
    settings = settings or ServiceSettings()
    lock = threading.Lock()
    authorised = bearer_token_check(settings.token)
    fingerprint = str(search.index.info.get("model_sha256", ""))[:12]
    case_modalities = sorted({modality for _, modality in search.index.keys()})  # the index is fixed while served

    app = FastAPI(title="medfm similar-case search", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json",
                  description="Search a medfm case index with a study (DICOM, WFDB, PNG/JPEG) or a finding in words. "
                              "Every endpoint but `/api/health` needs `Authorization: Bearer <token>`.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s above carry the headers too

    @app.get("/api/health", tags=["service"])
    async def health() -> dict:
        """Liveness; needs no token."""
        return {"status": "ok"}

    @app.get("/api/version", tags=["service"], dependencies=[authorised])
    def version() -> dict:
        """medfm's version, the index's size and the model's fingerprint (a prefix of its SHA-256)."""
        with lock:
            cases = len(search.index)
        return {"medfm": __version__, "cases": cases, "model": fingerprint, "query_modalities": search.modalities,
                "case_modalities": case_modalities}

    @app.post("/api/search", tags=["search"], dependencies=[authorised])
    def search_cases(
        file: Annotated[UploadFile | None, File(description="a DICOM file, a zip of one study (DICOM series or "
                                                             "WFDB .hea + .dat), or a PNG/JPEG")] = None,
        text: Annotated[str | None, Form(max_length=settings.max_text_chars,
                                         description="a finding in words, instead of a file")] = None,
        modality: Annotated[Modality | None, Form(description="the file's modality, where it cannot tell")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        filter_modality: Annotated[Modality | None, Form(description="only cases of this modality")] = None,
        site: Annotated[str | None, Form(max_length=200)] = None,
        device: Annotated[str | None, Form(max_length=200)] = None,
        date_from: Annotated[date | None, Form(description="studies on or after this day")] = None,
        date_to: Annotated[date | None, Form(description="studies on or before this day")] = None,
        include_own_patient: Annotated[bool, Form(description="keep the query patient's own studies")] = False,
    ) -> dict:
        """The ``k`` indexed cases most similar to an uploaded study or a text, best first."""
        if (file is None) == (not text or not text.strip()):
            raise HTTPException(422, "give either a file or a text query, not both and not neither")
        if modality == Modality.REPORT:
            raise HTTPException(422, "modality: a file is an image or ECG study; search by text with `text`")
        filters = {"modality": filter_modality and str(filter_modality), "site": site, "device": device,
                   "date_from": date_from and date_from.isoformat(), "date_to": date_to and date_to.isoformat()}

        def run(make_query) -> tuple[Query, list[Hit]]:
            with lock:
                query = make_query()
                return query, search.search(query, k, include_own_patient=include_own_patient, **filters)

        if file is None:
            with _as_http_error():
                query, hits = run(lambda: search.text_query(text))
        else:
            with tempfile.TemporaryDirectory(prefix="medfm-upload-", dir=settings.upload_dir) as folder:
                upload = save_upload(file.file, Path(folder), settings.max_upload_bytes)
                with _as_http_error(upload):
                    query, hits = run(lambda: search.file_query(upload, modality and str(modality),
                                                                    settings.max_unpacked_bytes))
        return {"query": {"kind": query.kind, "modality": query.modality},
                "results": [_result_json(search, hit) for hit in hits]}

    @app.get("/api/cases/{case_id}", tags=["cases"], dependencies=[authorised])
    def get_case(case_id: Annotated[int, PathParam(ge=0, le=MAX_CASE_ID)]) -> dict:
        """One indexed case with its full report."""
        with lock:
            case = _case_or_404(search, case_id)
        fields = _result_json(search, Hit(case_id, case, 0.0))
        del fields["score"]
        return fields

    @app.get("/api/cases/{case_id}/thumbnail", tags=["cases"], dependencies=[authorised],
             response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
    def get_thumbnail(case_id: Annotated[int, PathParam(ge=0, le=MAX_CASE_ID)]) -> FileResponse:
        """The case's thumbnail (PNG); its file is named by the index, never by the request."""
        with lock:
            path = search.thumbnail_path(_case_or_404(search, case_id))
        if path is None:
            raise HTTPException(404, f"case {case_id} has no thumbnail")
        return FileResponse(path, media_type="image/png")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        return FileResponse(STATIC / "api.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(index_dir: str | Path, *, model_dir: str | Path | None = None, host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, settings: ServiceSettings | None = None) -> None:
    """Run the service with uvicorn until interrupted.

    Raises:
        MedfmError: ``host`` is reachable from other machines and no token is set.
    """
    import uvicorn

    if not token and not is_loopback(host):
        raise MedfmError(f"--host {host}: refusing to serve beyond this machine without an access token; "
                         "set MEDFM_TOKEN or pass --token-file")
    if not token:
        log.warning("medfm serve: no access token set, so anyone on this machine can search the index "
                    "(set MEDFM_TOKEN or pass --token-file)")
    settings = (settings or ServiceSettings()).model_copy(update={"token": SecretStr(token) if token else None})
    torch.set_num_threads(torch_threads(settings.torch_threads))
    app = create_app(CaseSearch.open(index_dir, model_dir), settings)
    uvicorn.run(app, host=host, port=port, log_config=uvicorn_log_config(), server_header=False,
                proxy_headers=False)


def torch_threads(requested: int | None = None) -> int:
    """Threads for one query's embedding: as requested, else ``OMP_NUM_THREADS`` if set, else the usable cores (≤ 8).

    Queries run one at a time, so one may use every core; but where the machine is shared
    (``OMP_NUM_THREADS`` set) more threads than free cores make OpenMP's barriers wait on
    descheduled threads, and a query gets many times slower.
    """
    if requested:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    return min(8, len(os.sched_getaffinity(0)))


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


@contextmanager
def _as_http_error(upload: Path | None = None):
    """A medfm error about the query becomes a 422 whose message names the upload, not the server's files."""
    try:
        yield
    except MedfmError as err:
        raise HTTPException(422, public_message(err, upload)) from None


def _case_or_404(search: CaseSearch, case_id: int) -> Case:
    case = search.index.case(case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id} in this index")
    return case


def _result_json(search: CaseSearch, hit: Hit) -> dict:
    """``hit_json`` (the one place that decides which case fields leave the server) and what the page shows."""
    return {**hit_json(hit),
            "thumbnail_url": f"/api/cases/{hit.id}/thumbnail" if search.thumbnail_path(hit.case) else None,
            "excerpt": report_excerpt(hit.case.report),
            "finding_labels": [label.strip() for label in (hit.case.findings or "").split(",") if label.strip()]}
