"""The similar-case search API, the page that uses it, and ``serve`` that runs both.

One process holds one :class:`~medfm.heads.query.CaseSearch` (an index and its model).
The endpoints that touch it are plain functions, so FastAPI runs them in its threadpool
and the event loop keeps accepting requests; one lock serialises every use of the model
and the index: torch already spreads one query over the cores, two at once would only
compete for them, and the index's SQLite connection is shared.

Every request but ``/api/health`` names a token (:mod:`medfm.service.tokens`); the token's
cohorts limit a search's candidates inside the index search, and a case of another cohort
is a 404 exactly like a case that does not exist. With an audit log
(:mod:`medfm.service.audit`), every search and case view is recorded before its answer
leaves; if the record cannot be written, the answer does not leave (503).

Nothing in a response identifies a patient: cases leave the server through
:func:`~medfm.heads.query.hit_json`, which drops the patient key, and the response models
below, which list every field that may leave; a query file's Patient ID is used only to
leave that patient's own studies out of the results.
"""

# No `from __future__ import annotations`: FastAPI evaluates the endpoints' annotations, which
# refer to local names (settings, the bearer scheme) that a string annotation could not reach.
import ipaddress
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, SecretStr, model_validator

from medfm import __version__
from medfm.config import Config
from medfm.errors import MedfmError
from medfm.heads.query import CaseSearch, Query, hit_json, report_excerpt
from medfm.heads.retrieval import Case, Hit
from medfm.keys import Modality
from medfm.service.audit import AuditLog
from medfm.service.security import BodyLimit, SecurityHeaders, bearer_token_check, uvicorn_log_config
from medfm.service.tokens import AccessToken, Caller, TokenMatcher, default_token
from medfm.service.uploads import public_message, save_upload

STATIC = Path(__file__).resolve().parent / "static"
MAX_K = 100
MAX_CASE_ID = 2**63 - 1  # SQLite's integer range: a larger id is a 422, not an overflow
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, part headers and the text fields around an upload
SEARCH_FILTERS = ("filter_modality", "site", "device", "date_from", "date_to")

log = logging.getLogger(__name__)


class ServiceSettings(Config):
    """How the service admits requests.

    Attributes:
        token: one access token, named ``default``, seeing every cohort (``MEDFM_TOKEN``, ``--token-file``).
        tokens: several tokens, each with its name and cohorts (``--tokens``); not with ``token``.
            Neither: the service is open (``serve`` allows that on loopback only).
        audit_log: the audit log to append every search and case view to (None: no audit log).
        max_upload_bytes: the largest query file accepted (a zip counts as uploaded, not unpacked).
        max_unpacked_bytes: the most an uploaded zip may expand to on disk.
        max_text_chars: the longest text query.
        upload_dir: where uploads are written while they are searched (default: the system's temp folder).
        torch_threads: threads for one query's embedding (default: see :func:`torch_threads`).
    """

    token: SecretStr | None = None
    tokens: list[AccessToken] | None = None
    audit_log: Path | None = None
    max_upload_bytes: int = Field(200 * 1024**2, ge=1)
    max_unpacked_bytes: int = Field(1024**3, ge=1)
    max_text_chars: int = Field(2000, ge=1)
    upload_dir: Path | None = None
    torch_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_source_of_tokens(self) -> "ServiceSettings":
        if self.token is not None and self.tokens is not None:
            raise ValueError("give either one token or a list of tokens, not both")
        return self

    def access_tokens(self) -> list[AccessToken]:
        """Every token the service accepts (empty: it is open)."""
        if self.token is not None:
            return [default_token(self.token.get_secret_value())]
        return list(self.tokens or [])


# -- what leaves the server: every field is listed, so a new column of the index stays inside until added here --


class QueryInfo(BaseModel):
    kind: str = Field(description="text or file")
    modality: str = Field(description="the query's modality (report for a text)")


class CaseDetails(BaseModel):
    id: int = Field(description="the case's id in this index")
    study_id: str
    modality: str
    cohort: str | None = None
    site: str | None = None
    device: str | None = None
    date: str | None = None
    report: str | None = None
    findings: str | None = None
    thumbnail: str | None = None
    thumbnail_url: str | None = None
    excerpt: str
    finding_labels: list[str]


class CaseResult(CaseDetails):
    score: float = Field(description="cosine similarity to the query")


class SearchResults(BaseModel):
    query: QueryInfo
    results: list[CaseResult] = Field(description="best first")


class VersionInfo(BaseModel):
    medfm: str
    cases: int = Field(description="cases this token may see")
    model: str = Field(description="the first 12 hex digits of the model's SHA-256")
    query_modalities: list[str]
    case_modalities: list[str] = Field(description="modalities of the cases this token may see")
    cohorts: list[str] = Field(description="the index's cohorts this token may see")


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "the multipart body cannot be parsed", 401: "missing or wrong access token",
            404: "no such case (or not one this token may see)", 413: "upload over the size limit",
            422: "a form value, a path parameter or the upload is not accepted",
            503: "the audit log cannot be written, so nothing is served"}
    return {code: {"model": Problem, "description": text[code]} for code in codes}


def create_app(search: CaseSearch, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``search``: the API under ``/api``, the page at ``/``.

    Raises:
        AuditChainError: the settings' audit log exists and its chain is broken.
    """
    settings = settings or ServiceSettings()
    lock = threading.Lock()
    tokens = settings.access_tokens()
    authorised = bearer_token_check(TokenMatcher(tokens))
    fingerprint = str(search.index.info.get("model_sha256", ""))[:12]
    counts = search.index.counts()  # the index is fixed while served
    _warn_of_unknown_cohorts(tokens, {cohort for cohort, _ in counts})
    audit = AuditLog(settings.audit_log) if settings.audit_log is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if audit is not None:
            audit.close()

    app = FastAPI(title="medfm similar-case search", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/api/openapi.json", lifespan=lifespan,
                  description="Search a medfm case index with a study (DICOM, WFDB, PNG/JPEG) or a finding in words. "
                              "Every endpoint but `/api/health` needs `Authorization: Bearer <token>`; a token sees "
                              "the cases of its cohorts only.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + FORM_OVERHEAD)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s above carry the headers too

    def audited(caller: Caller, action: str, query_kind: str, query_modality: str | None, result_ids: list[int],
                **details: Any) -> None:
        if audit is None:
            return
        try:
            audit.record(token=caller.name, action=action, query_kind=query_kind, query_modality=query_modality,
                         result_ids=result_ids, **details)
        except MedfmError as err:
            log.error("medfm serve: %s", err)
            raise HTTPException(503, "the audit log cannot be written, so nothing is served") from None

    @app.get("/api/health", tags=["service"])
    async def health() -> dict:
        """Liveness; needs no token."""
        return {"status": "ok"}

    @app.get("/api/version", tags=["service"], response_model=VersionInfo, responses=_problems(401))
    def version(caller: Annotated[Caller, authorised]) -> VersionInfo:
        """medfm's version, the cases this token may see, and the model's fingerprint (a prefix of its SHA-256)."""
        visible = {key: n for key, n in counts.items() if caller.may_see(key[0])}
        return VersionInfo(medfm=__version__, cases=sum(visible.values()), model=fingerprint,
                           query_modalities=search.modalities,
                           case_modalities=sorted({modality for _, modality in visible}),
                           cohorts=sorted({cohort for cohort, _ in visible if cohort is not None}))

    @app.post("/api/search", tags=["search"], response_model=SearchResults,
              responses=_problems(400, 401, 413, 422, 503))
    def search_cases(
        caller: Annotated[Caller, authorised],
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
        """The ``k`` cases most similar to an uploaded study or a text, best first, among the token's cohorts."""
        if (file is None) == (not text or not text.strip()):
            raise HTTPException(422, "give either a file or a text query, not both and not neither")
        if modality == Modality.REPORT:
            raise HTTPException(422, "modality: a file is an image or ECG study; search by text with `text`")
        filters = {"modality": filter_modality and str(filter_modality), "site": site, "device": device,
                   "date_from": date_from and date_from.isoformat(), "date_to": date_to and date_to.isoformat()}

        def run(make_query: Callable[[], Query]) -> tuple[Query, list[Hit]]:
            with lock:
                query = make_query()
                return query, search.search(query, k, include_own_patient=include_own_patient,
                                            cohorts=caller.cohorts, **filters)

        if file is None:
            with _as_http_error():
                query, hits = run(lambda: search.text_query(text))
        else:
            with tempfile.TemporaryDirectory(prefix="medfm-upload-", dir=settings.upload_dir) as folder:
                upload = save_upload(file.file, Path(folder), settings.max_upload_bytes)
                with _as_http_error(upload):
                    query, hits = run(lambda: search.file_query(upload, modality and str(modality),
                                                                    settings.max_unpacked_bytes))
        used = [name for name, value in zip(SEARCH_FILTERS, filters.values(), strict=True) if value is not None]
        # The text itself is never recorded (it could name a patient): its length says enough to tell queries apart.
        audited(caller, "search", query.kind, query.modality, [hit.id for hit in hits], k=k, filters=used,
                query_chars=len(text) if file is None else None, include_own_patient=include_own_patient)
        return {"query": {"kind": query.kind, "modality": query.modality},
                "results": [_result_json(search, hit) for hit in hits]}

    @app.get("/api/cases/{case_id}", tags=["cases"], response_model=CaseDetails,
             responses=_problems(401, 404, 422, 503))
    def get_case(caller: Annotated[Caller, authorised],
                 case_id: Annotated[int, PathParam(ge=0, le=MAX_CASE_ID)]) -> dict:
        """One case with its full report."""
        with lock:
            case = _visible_case(search, case_id, caller)
        audited(caller, "case", "details", None, [] if case is None else [case_id], case_id=case_id)
        if case is None:
            raise _no_case(case_id)
        fields = _result_json(search, Hit(case_id, case, 0.0))
        del fields["score"]
        return fields

    @app.get("/api/cases/{case_id}/thumbnail", tags=["cases"], response_class=FileResponse,
             responses={200: {"content": {"image/png": {}}}, **_problems(401, 404, 422, 503)})
    def get_thumbnail(caller: Annotated[Caller, authorised],
                      case_id: Annotated[int, PathParam(ge=0, le=MAX_CASE_ID)]) -> FileResponse:
        """The case's thumbnail (PNG); its file is named by the index, never by the request."""
        with lock:
            case = _visible_case(search, case_id, caller)
            path = None if case is None else search.thumbnail_path(case)
        audited(caller, "case", "thumbnail", None, [] if path is None else [case_id], case_id=case_id)
        if case is None:
            raise _no_case(case_id)
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
          token: str | None = None, tokens: list[AccessToken] | None = None, audit_log: str | Path | None = None,
          settings: ServiceSettings | None = None) -> None:
    """Run the service with uvicorn until interrupted.

    Args:
        token: one token seeing every cohort (``MEDFM_TOKEN``); or
        tokens: several, each with its cohorts (a tokens file, :func:`~medfm.service.tokens.load_tokens`).
        audit_log: append every search and case view to this file.

    Raises:
        MedfmError: ``host`` is reachable from other machines and no token is set, or the audit log's
            chain is broken.
    """
    import uvicorn

    given = {"token": SecretStr(token) if token else None, "tokens": tokens or None,
             "audit_log": Path(audit_log) if audit_log else None}
    settings = (settings or ServiceSettings()).model_copy(update={k: v for k, v in given.items() if v is not None})
    if settings.token is not None and settings.tokens is not None:
        raise MedfmError("give either one token (MEDFM_TOKEN, --token-file) or a tokens file (--tokens), not both")
    if not settings.access_tokens() and not is_loopback(host):
        raise MedfmError(f"--host {host}: refusing to serve beyond this machine without an access token; "
                         "pass --tokens, --token-file or set MEDFM_TOKEN")
    if not settings.access_tokens():
        log.warning("medfm serve: no access token set, so anyone on this machine can search the index "
                    "(pass --tokens, --token-file or set MEDFM_TOKEN)")
    if settings.audit_log is None and not is_loopback(host):
        log.warning("medfm serve: no audit log (--audit-log): searches and case views are not recorded")
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


def _visible_case(search: CaseSearch, case_id: int, caller: Caller) -> Case | None:
    """The case, if it exists and the caller's token may see its cohort; None either way, so a 404 says neither."""
    case = search.index.case(case_id)
    return case if case is not None and caller.may_see(case.cohort) else None


def _no_case(case_id: int) -> HTTPException:
    return HTTPException(404, f"no case {case_id} in this index")


def _warn_of_unknown_cohorts(tokens: list[AccessToken], cohorts: set[str | None]) -> None:
    """A token scoped to a cohort this index does not hold (a typo, or one not indexed yet) sees none of its cases."""
    for token in tokens:
        unknown = [] if token.cohorts == "all" else sorted(set(token.cohorts) - cohorts)
        if unknown:
            log.warning("medfm serve: token %r names cohorts this index does not hold: %s", token.name,
                        ", ".join(unknown))


def _result_json(search: CaseSearch, hit: Hit) -> dict:
    """``hit_json`` (the one place that decides which case fields leave the server) and what the page shows."""
    return {**hit_json(hit),
            "thumbnail_url": f"/api/cases/{hit.id}/thumbnail" if search.thumbnail_path(hit.case) else None,
            "excerpt": report_excerpt(hit.case.report),
            "finding_labels": [label.strip() for label in (hit.case.findings or "").split(",") if label.strip()]}
