"""Pull studies from a DICOMweb server into a cohort: QIDO-RS search, WADO-RS retrieve, manifest rows, index.

One study becomes one manifest row. Its series whose DICOM Modality maps to an image
modality of the cohort (:data:`DICOM_MODALITIES`) are retrieved whole, de-identified and written
under ``<manifest folder>/dicomweb/<modality>/<study key>/``: one file for CXR, OCT and fundus,
a folder of slices for CT. Every path component is made here (the modality key, a hash of
the de-identified StudyInstanceUID, a hash of each de-identified SOPInstanceUID), never from
header text, so no server answer can place a file outside that folder.

Every instance is de-identified before it is written (:func:`medfm.io.deid.deidentify`: the
PS3.15 Annex E Basic Profile with the Retain Longitudinal Temporal Information with Modified
Dates and Retain Patient Characteristics options, :data:`INGEST_OPTIONS`). UIDs, pseudonyms and
date shifts are keyed by the cohort's de-identification key, ``<manifest folder>/private/deid.key``
(created owner-only on the first ingest), so a series keeps one SeriesInstanceUID, a patient one
pseudonym, and a re-run the same study keys. Instances flagged BurnedInAnnotation YES are refused
(their series is not stored and is counted) unless ``allow_burned_in``.

A study's files are written into a hidden staging folder and renamed into place when
complete; the manifest is rewritten atomically after each batch of studies, so a crash
leaves the previous manifest valid and at worst some unlisted files that the next run
replaces. A study whose key is already in the manifest is skipped before anything of it
is retrieved: re-running pulls only what is new.

No original identifier reaches the disk: the patient column holds the PatientID's pseudonym,
the study column a hash of the remapped StudyInstanceUID, ``study_date`` the shifted date and
``site`` (unless given) a pseudonym of the InstitutionName. No message or summary shows a name
or an identifier, original or pseudonymous.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medfm.atomic import fsync_directory, fsync_tree, write_text_atomic
from medfm.cohort.manifest import CohortConfig, load_cohort, manifest_location, read_manifest
from medfm.errors import ConfigError, MedfmError, first_line
from medfm.io.deid import KEY_FILE, BurnedInAnnotationError, DeidKey, DeidOption, deidentify, load_or_create_key
from medfm.keys import Modality

# DICOM Modality (0008,0060) of a series → the cohort image modality it fills; other series are skipped.
DICOM_MODALITIES: dict[str, Modality] = {
    "CR": Modality.CXR, "DX": Modality.CXR, "OPT": Modality.OCT, "OP": Modality.FUNDUS, "CT": Modality.CT,
}
# Modalities whose series is a folder of instances (slices); the others are one file.
SERIES_FOLDERS: frozenset[Modality] = frozenset({Modality.CT})
STORAGE = "dicomweb"  # folder beside the manifest
PRIVATE = "private"  # folder beside the manifest, owner-only: the de-identification key
# Basic Profile options on ingest: a cohort needs each patient's study order and intervals (shifted
# dates) and the age and sex its inclusion rules and subgroups use.
INGEST_OPTIONS = frozenset({DeidOption.RETAIN_MODIFIED_DATES, DeidOption.RETAIN_PATIENT_CHARACTERISTICS})
PAGE_SIZE = 100  # studies per QIDO-RS request
BATCH = 16  # studies between manifest writes
TIMEOUT = (10.0, 300.0)  # seconds: connect, read (a CT series can be large)
RETRIES, RETRY_WAIT_MS = 3, 250  # attempts per request; waits 0.5 s, then 1 s (busy server, 503)
# Ask for each instance in the transfer syntax the server holds it in: pixel data stored as received.
AS_STORED = (("application/dicom", "*"),)

_STUDY_UID, _SERIES_UID, _MODALITY = "0020000D", "0020000E", "00080060"
_SERIES_NUMBER, _SERIES_INSTANCES = "00200011", "00201209"


class DicomWebError(MedfmError):
    """A DICOMweb server could not be searched, or a study could not be retrieved or stored.

    The message is one line naming the server (without credentials) or the study key, and the reason.
    """


def study_key(study_instance_uid: str) -> str:
    """The cohort's study id for a (de-identified) StudyInstanceUID: stable, not the UID itself (``dw-`` + 16 hex)."""
    return "dw-" + hashlib.sha256(study_instance_uid.encode()).hexdigest()[:16]


def instance_file_name(sop_instance_uid: str) -> str:
    """File name of one stored instance: a hash of its de-identified SOPInstanceUID (unique, never header text)."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:24] + ".dcm"


def deid_key_location(manifest_path: str | Path) -> Path:
    """Where a cohort's de-identification key lives: ``<manifest folder>/private/deid.key``."""
    return Path(manifest_path).parent / PRIVATE / KEY_FILE


@dataclass(frozen=True)
class _Deid:
    key: DeidKey
    options: frozenset[DeidOption]
    allow_burned_in: bool


@dataclass
class _Manifest:
    """The cohort's CSV manifest: its columns, the study keys it holds, and the rows not yet written."""

    config: CohortConfig
    path: Path
    columns: list[str]
    studies: set[str]
    pending: list[dict[str, str]] = field(default_factory=list)

    def commit(self) -> None:
        """Append the pending rows to the manifest, atomically; existing rows are kept byte for byte."""
        if not self.pending:
            return
        text = self.path.read_text(encoding="utf-8") if self.path.is_file() else _csv_line(self.columns)
        if text and not text.endswith("\n"):
            text += "\n"
        write_text_atomic(self.path, text + "".join(_csv_line([r.get(c, "") for c in self.columns])
                                                    for r in self.pending))
        self.pending.clear()


@dataclass
class _Counts:
    matched: int = 0
    already_present: int = 0
    ingested: int = 0
    without_images: int = 0
    series: int = 0
    files: int = 0
    skipped_series: Counter = field(default_factory=Counter)
    skipped_instances: int = 0
    refused_burned_in: int = 0


def ingest_dicomweb(url: str, cohort_path: str | Path, *, filters: dict[str, str] | None = None,
                    limit: int | None = None, index_dir: str | Path | None = None,
                    model_dir: str | Path | None = None, site: str | None = None,
                    client: DICOMwebClient | None = None, console: Console | None = None,
                    deid_options: Iterable[DeidOption] = INGEST_OPTIONS,
                    allow_burned_in: bool = False) -> dict[str, Any]:
    """Pull the studies a QIDO-RS search finds into a cohort's storage and manifest, de-identified, and
    optionally into its index.

    Args:
        url: DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        cohort_path: cohort YAML with a CSV ``manifest`` (created with a header from the YAML if missing).
        filters: QIDO-RS study filters, e.g. ``{"ModalitiesInStudy": "CT", "StudyDate": "20200101-20221231"}``.
        limit: at most this many new studies (studies already in the manifest do not count).
        index_dir: also embed the new studies into this index (created if missing, with ``model_dir``).
        model_dir: checkpoint that embeds them; default the one the index was built with.
        site: value of the ``site`` column for new rows; default a keyed pseudonym of each study's
            InstitutionName (``site-`` + 8 hex), the same for every study of one institution.
        client: a configured client (authentication, proxies); default one for ``url``.
        console: where progress is shown.
        deid_options: PS3.15 E.3 options on top of the Basic Profile; ``()`` for the Basic Profile alone
            (then ``study_date``, ``age`` and ``sex`` stay empty).
        allow_burned_in: store instances flagged BurnedInAnnotation YES (pixels not cleaned).

    Returns:
        ``{"url", "manifest", "matched", "already_present", "ingested", "without_images", "series",
        "files", "skipped_series", "skipped_instances", "refused_burned_in", "index", "message"}``;
        ``skipped_series`` counts series not retrieved by DICOM Modality (unmapped, not in the cohort, or
        a second series of a modality), ``skipped_instances`` retrieved instances not stored,
        ``refused_burned_in`` series not stored because an instance has burned-in annotation, and
        ``index`` is :func:`medfm.heads.cases.update_index`'s summary or None.

    Raises:
        ConfigError: the cohort YAML is invalid or its manifest is not a CSV file.
        DeidKeyError: the cohort's de-identification key is malformed or open to others.
        DicomWebError: the server cannot be reached or answers with an error, or a study's
            instances are incomplete or not DICOM. Studies finished before it stay in the manifest.
    """
    if limit is not None and limit < 0:
        raise DicomWebError(f"limit must be 0 or more, got {limit}")
    shown = _without_credentials(url)
    console = console or Console()
    manifest = _open_manifest(Path(cohort_path))
    if index_dir is not None:  # before anything is retrieved: a wrong index or model fails now, not after
        model_dir = _index_model(Path(index_dir), model_dir)
    storage = manifest.path.parent / STORAGE
    deid = _Deid(load_or_create_key(deid_key_location(manifest.path)), frozenset(map(DeidOption, deid_options)),
                 allow_burned_in)
    if client is None:
        client = DICOMwebClient(url.rstrip("/"), timeout=TIMEOUT)
        # The client's default retries every failure, refused connections included, for 30 s.
        client.set_http_retry_params(max_attempts=RETRIES, wait_exponential_multiplier=RETRY_WAIT_MS)
    counts = _Counts()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("searching studies", total=None)
        try:
            for study_uid in _search_studies(client, shown, filters or {}):
                counts.matched += 1
                key = study_key(deid.key.uid(study_uid))  # the study key names the de-identified study
                if key in manifest.studies:
                    counts.already_present += 1
                    continue
                if limit is not None and counts.ingested >= limit:
                    break
                progress.update(task, description=f"retrieving {key}")
                row = _ingest_study(client, shown, study_uid, key, manifest, storage, site, deid, counts)
                if row is not None:
                    manifest.pending.append(row)
                    manifest.studies.add(key)
                    counts.ingested += 1
                    if len(manifest.pending) >= BATCH:
                        manifest.commit()
                progress.update(task, completed=counts.ingested)
        finally:
            manifest.commit()  # every pending row's files are complete, whatever stopped the loop

    index = None
    if index_dir is not None:
        from medfm.heads.cases import update_index

        index = update_index(index_dir, model_dir, cohort_path, console=console)
    summary = {"url": shown, "manifest": str(manifest.path), **counts.__dict__,
               "skipped_series": dict(counts.skipped_series), "index": index}
    summary["message"] = _message(summary)
    return summary


# -- the cohort side -------------------------------------------------------------------------------


def _open_manifest(cohort_path: Path) -> _Manifest:
    """The cohort's manifest (all rows, whatever ``include`` says), or a header-only one if the file is missing."""
    config = load_cohort(cohort_path, require_manifest=False)
    if config.source is not None:
        raise ConfigError(cohort_path, "source", "ingest appends to a manifest file; this cohort's table is built "
                                                 f"by the {config.source.adapter!r} adapter")
    path = manifest_location(cohort_path, config)
    if path.suffix.lower() != ".csv":
        raise ConfigError(cohort_path, "manifest", f"ingest appends to a CSV manifest, not {path.name}")
    if not path.is_file():
        return _Manifest(config, path, _columns_of(config), set())
    table = read_manifest(path, config, cohort_path)
    return _Manifest(config, path, list(table.columns), set(table[config.study_column].dropna().astype(str)))


def _columns_of(config: CohortConfig) -> list[str]:
    """Header of a new manifest: every column the cohort YAML names, in its order."""
    columns = [config.patient_column, config.study_column, *config.metadata]
    for modality in config.modalities:
        columns += config.columns_of(modality)
    columns += config.labels
    return list(dict.fromkeys(columns))


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _index_model(index_dir: Path, model_dir: str | Path | None) -> Path:
    """The checkpoint that embeds new studies: the one given, else the one the index was built with."""
    from medfm.heads.retrieval import CURRENT, CaseIndex

    if model_dir is not None:
        if not Path(model_dir).is_dir():
            raise DicomWebError(f"{model_dir}: no model checkpoint there")
        return Path(model_dir)
    if not (index_dir / CURRENT).is_file():
        raise DicomWebError(f"{index_dir}: no index there to add to; give a model checkpoint to create one")
    recorded = CaseIndex.load(index_dir).info.get("model")
    if not recorded:
        raise DicomWebError(f"{index_dir}: the index records no model; give the checkpoint that built it")
    return Path(recorded)


# -- the server side -------------------------------------------------------------------------------


def _search_studies(client: DICOMwebClient, url: str, filters: dict[str, str]) -> Iterator[str]:
    """StudyInstanceUIDs matching ``filters``, page by page until the server has no more."""
    seen: set[str] = set()
    offset = 0
    while True:
        with _answer_from(url, "QIDO-RS study search"):
            page = client.search_for_studies(offset=offset, limit=PAGE_SIZE, fields=[_STUDY_UID],
                                             search_filters=dict(filters))
        uids = [uid for uid in map(_study_uid_of, page) if uid is not None and uid not in seen]
        if not uids:  # an empty page, or a server that ignores offset and repeats itself
            return
        seen.update(uids)
        yield from uids
        offset += len(page)


def _study_uid_of(result: dict[str, Any]) -> str | None:
    values = result.get(_STUDY_UID, {}).get("Value") or [None]
    return values[0]


@dataclass(frozen=True)
class _Series:
    uid: str
    modality: Modality
    number: int
    expected: int | None  # NumberOfSeriesRelatedInstances, where the server gives it


def _series_to_store(client: DICOMwebClient, url: str, study_uid: str, key: str, config: CohortConfig,
                     counts: _Counts) -> list[_Series]:
    """The first series (by SeriesNumber) of each cohort image modality; the others are counted as skipped."""
    with _answer_from(url, f"study {key}: QIDO-RS series search"):
        found = client.search_for_series(study_uid, fields=[_MODALITY, _SERIES_NUMBER, _SERIES_INSTANCES])
    chosen: dict[Modality, _Series] = {}
    candidates = []
    for result in found:
        dicom_modality = str(_value(result, _MODALITY) or "").strip().upper()
        uid = _value(result, _SERIES_UID)
        modality = DICOM_MODALITIES.get(dicom_modality)
        if uid is None or modality is None or modality not in config.modalities:
            counts.skipped_series[dicom_modality or "unknown"] += 1
            continue
        expected = _value(result, _SERIES_INSTANCES)
        candidates.append((_Series(str(uid), modality, _as_int(_value(result, _SERIES_NUMBER), 1 << 30),
                                   _as_int(expected, None)), dicom_modality))
    for series, dicom_modality in sorted(candidates, key=lambda c: (c[0].number, c[0].uid)):
        if series.modality in chosen:  # one cell per modality in the manifest
            counts.skipped_series[dicom_modality] += 1
        else:
            chosen[series.modality] = series
    return list(chosen.values())


def _value(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value") or [None]
    return values[0]


def _as_int(value: Any, default: int | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _retrieve(client: DICOMwebClient, url: str, study_uid: str, key: str, series: _Series) -> list[Dataset]:
    """Every instance of a series, checked to belong to it and to be complete."""
    with _answer_from(url, f"study {key}: WADO-RS {series.modality} series retrieve"):
        instances = client.retrieve_series(study_uid, series.uid, media_types=AS_STORED)
    if not instances:
        raise DicomWebError(f"{url}: study {key}: the {series.modality} series came back empty")
    if series.expected is not None and len(instances) != series.expected:
        raise DicomWebError(f"{url}: study {key}: the {series.modality} series came back with {len(instances)} "
                            f"of its {series.expected} instances")
    for ds in instances:
        if str(ds.get("StudyInstanceUID", "")) != study_uid or str(ds.get("SeriesInstanceUID", "")) != series.uid:
            raise DicomWebError(f"{url}: study {key}: an instance of the {series.modality} series belongs "
                                "to another study or series")
        if not str(ds.get("SOPInstanceUID", "")).strip() or ("PixelData" not in ds and "FloatPixelData" not in ds):
            raise DicomWebError(f"{url}: study {key}: an instance of the {series.modality} series has no "
                                "SOPInstanceUID or no pixel data")
    return sorted(instances, key=lambda ds: (_as_int(ds.get("InstanceNumber"), 1 << 30), str(ds.SOPInstanceUID)))


@contextmanager
def _answer_from(url: str, what: str) -> Iterator[None]:
    """Turn the client's failures (network, HTTP status, unparseable answer) into one-line DicomWebErrors."""
    try:
        yield
    except requests.HTTPError as err:
        response = err.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(err)
        raise DicomWebError(f"{url}: {what}: {status}".rstrip()) from None
    except requests.Timeout:
        raise DicomWebError(f"{url}: {what}: no answer within {TIMEOUT[1]:.0f} s") from None
    except requests.ConnectionError as err:
        raise DicomWebError(f"{url}: {what}: cannot connect ({_connection_reason(err)})") from None
    except requests.RequestException as err:
        raise DicomWebError(f"{url}: {what}: {first_line(err)}") from None
    except (InvalidDicomError, ValueError, KeyError, EOFError) as err:
        raise DicomWebError(f"{url}: {what}: not a valid DICOMweb answer ({first_line(err)})") from None


def _connection_reason(err: requests.ConnectionError) -> str:
    """``Connection refused``, ``Name or service not known``... rather than urllib3's nested repr."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(err))
    return match.group(1).strip() if match else "the server did not answer"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


# -- one study -------------------------------------------------------------------------------------


def _ingest_study(client: DICOMwebClient, url: str, study_uid: str, key: str, manifest: _Manifest,
                  storage: Path, site: str | None, deid: _Deid, counts: _Counts) -> dict[str, str] | None:
    """Retrieve, de-identify and store one study's series; its manifest row, or None if it has no series to store."""
    config = manifest.config
    chosen = _series_to_store(client, url, study_uid, key, config, counts)
    if not chosen:
        counts.without_images += 1
        return None
    retrieved: dict[Modality, list[Dataset]] = {}
    for series in chosen:
        for modality, instances in _by_own_modality(_retrieve(client, url, study_uid, key, series), config,
                                                    counts).items():
            if modality in retrieved:  # instances filed in another modality's series; that one came first
                counts.skipped_instances += len(instances)
            else:
                retrieved[modality] = instances
        counts.series += 1
    if retrieved and not str(next(iter(retrieved.values()))[0].get("PatientID", "")).strip():
        raise DicomWebError(f"{url}: study {key}: no PatientID; the cohort groups studies by patient")
    site_value = site
    deidentified: dict[Modality, list[Dataset]] = {}
    for modality, instances in retrieved.items():
        try:
            deidentified[modality] = [deidentify(ds, deid.key, options=deid.options,
                                                 allow_burned_in=deid.allow_burned_in) for ds in instances]
        except BurnedInAnnotationError:
            counts.refused_burned_in += 1
            continue
        if site_value is None:  # InstitutionName is removed by de-identification: name the site first
            institution = _one_line(instances[0].get("InstitutionName"))
            site_value = deid.key.site_pseudonym(institution) if institution else ""
    if not deidentified:
        counts.without_images += 1
        return None
    first = next(iter(deidentified.values()))[0]
    row = {config.patient_column: str(first.PatientID), config.study_column: key,
           "study_date": _iso_date(first.get("StudyDate")), "site": site_value,
           "age": _age_years(first.get("PatientAge")), "sex": _sex(first.get("PatientSex"))}
    for modality, instances in deidentified.items():
        row[config.modalities[modality]] = _store(instances, modality, key, manifest.path.parent, storage, counts)
        row[f"{modality}_device"] = " ".join(
            filter(None, (_one_line(instances[0].get(k)) for k in ("Manufacturer", "ManufacturerModelName"))))
    return {column: value for column, value in row.items() if column in manifest.columns}


def _by_own_modality(instances: list[Dataset], config: CohortConfig, counts: _Counts) -> dict[Modality, list[Dataset]]:
    """Instances grouped by their own DICOM Modality, not the series': a series that mixes modalities
    (invalid, but seen) must not put an OCT volume in the CXR column. Unmapped instances are counted."""
    groups: dict[Modality, list[Dataset]] = {}
    for ds in instances:
        modality = DICOM_MODALITIES.get(str(ds.get("Modality", "")).strip().upper())
        if modality is None or modality not in config.modalities:
            counts.skipped_instances += 1
        else:
            groups.setdefault(modality, []).append(ds)
    return groups


def _store(instances: list[Dataset], modality: Modality, key: str, root: Path, storage: Path,
           counts: _Counts) -> str:
    """Write a series under ``storage/<modality>/<key>/`` via a staging folder; the path relative to ``root``.

    A single-file modality keeps the first instance (by InstanceNumber); extra ones are counted.
    """
    if modality not in SERIES_FOLDERS and len(instances) > 1:
        counts.skipped_instances += len(instances) - 1
        instances = instances[:1]
    final = storage / str(modality) / key
    staging = final.with_name(f".{key}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir(parents=True)
    try:
        for ds in instances:
            _write_instance(ds, staging / instance_file_name(str(ds.SOPInstanceUID)), key)
        fsync_tree(staging)  # the instances are on disk before the manifest that lists them
        if final.exists():  # an earlier run's files for a study the manifest never listed
            shutil.rmtree(final)
        os.replace(staging, final)
        fsync_directory(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts.files += len(instances)
    stored = final if modality in SERIES_FOLDERS and len(instances) > 1 else final / os.listdir(final)[0]
    return stored.relative_to(root).as_posix()


def _write_instance(ds: Dataset, path: Path, key: str) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as err:
        raise DicomWebError(f"study {key}: an instance cannot be written as a DICOM file ({first_line(err)})") \
            from None
    with open(path, "rb") as handle:  # the manifest that lists it is fsynced; so is the file, first
        os.fsync(handle.fileno())


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _iso_date(value: Any) -> str:
    """DICOM ``YYYYMMDD`` → ``YYYY-MM-DD``; empty when missing or not a date."""
    try:
        return dt.datetime.strptime(str(value).strip(), "%Y%m%d").date().isoformat()
    except ValueError:
        return ""


def _age_years(value: Any) -> str:
    """DICOM PatientAge ``065Y`` → ``65``; other units (days, weeks, months) and missing → empty."""
    match = re.fullmatch(r"(\d{3})Y", str(value or "").strip())
    return str(int(match.group(1))) if match else ""


def _sex(value: Any) -> str:
    text = str(value or "").strip().upper()
    return text if text in ("M", "F", "O") else ""


def _message(summary: dict[str, Any]) -> str:
    skipped = summary["skipped_series"]
    parts = [f"ingested {summary['ingested']} studies ({summary['series']} series, {summary['files']} files) "
             f"of {summary['matched']} found at {summary['url']}",
             f"{summary['already_present']} already in the cohort"]
    if skipped:
        parts.append(f"skipped series: {', '.join(f'{n} {m}' for m, n in sorted(skipped.items()))}")
    if summary["without_images"]:
        parts.append(f"{summary['without_images']} studies without a series to store")
    if summary["skipped_instances"]:
        parts.append(f"{summary['skipped_instances']} instances left out (a second image of a single-image "
                     "modality, or a modality the cohort does not hold)")
    if summary["refused_burned_in"]:
        parts.append(f"{summary['refused_burned_in']} series refused: BurnedInAnnotation YES (pixels may show "
                     "identifiers; allow_burned_in keeps them)")
    index = summary["index"]
    if index is not None:
        parts.append(f"index: added {index['added']} cases, {index['cases']} in all")
    return "; ".join(parts) + f"  ·  manifest: {summary['manifest']}"
