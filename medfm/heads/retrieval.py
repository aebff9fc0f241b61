"""Similar-case index: unit vectors in FAISS, what a radiologist sees about each case in SQLite.

One case is one study's embedding in one modality (a study with a CXR and an ECG is two
cases, found by either). The FAISS id of a case is its SQLite row id, so a metadata
filter (modality, site, device, date range, "not this patient") becomes the set of
allowed ids handed to FAISS's search (``IDSelectorBatch``): results are filtered inside
the search, never over-fetched and thinned afterwards.

On disk an index is a folder of versions and a ``CURRENT`` file naming the live one,
replaced atomically after the new version is complete (the way LevelDB switches
manifests): a crash while saving leaves the previous version readable. Every file of a
version is listed with its SHA-256 in ``index.json`` and checked on load.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from medfm.atomic import sha256_file, write_json_atomic, write_text_atomic
from medfm.config import Config
from medfm.errors import MedfmError, MedfmReadError

FORMAT = "medfm-index/1"
CURRENT = "CURRENT"
RECALL_K = 10


class IndexFileError(MedfmReadError):
    """An index folder that is missing, incomplete, or does not match its recorded hashes."""


class IndexConfig(Config):
    """How vectors are searched.

    Attributes:
        kind: ``exact`` (inner product over every vector), ``hnsw`` (graph, approximate),
            or ``auto``: exact up to ``exact_below`` cases, HNSW above.
        hnsw_m, ef_construction, ef_search: HNSW's links per node and beam widths.
        recall_queries: stored vectors used as queries when measuring, at build time, the
            approximate index's recall@10 against exact search.
    """

    kind: Literal["auto", "exact", "hnsw"] = "auto"
    exact_below: int = Field(50_000, ge=0)
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(128, ge=8)
    recall_queries: int = Field(500, ge=1)

    def resolved_kind(self, n: int) -> Literal["exact", "hnsw"]:
        if self.kind != "auto":
            return self.kind
        return "exact" if n < self.exact_below else "hnsw"


@dataclass(frozen=True)
class Case:
    """What the index keeps about one study in one modality; never a patient name or identifier."""

    study_id: str
    patient_key: str
    modality: str
    site: str | None = None
    device: str | None = None
    date: str | None = None  # ISO 8601, so that string order is date order
    report: str | None = None
    thumbnail: str | None = None  # file name inside the index folder's thumbnails/
    findings: str | None = None  # the cohort's positive labels for this modality, comma-separated


@dataclass(frozen=True)
class Hit:
    id: int  # the case's id in this index (``CaseIndex.case(id)``)
    case: Case
    score: float  # cosine similarity of unit vectors


_COLUMNS = tuple(Case.__dataclass_fields__)
_SCHEMA = (f"CREATE TABLE cases (id INTEGER PRIMARY KEY, {', '.join(f'{c} TEXT' for c in _COLUMNS)}, "
           "UNIQUE (study_id, modality))")


class CaseIndex:
    """Vectors and case metadata kept in step; see the module docstring for the layout."""

    def __init__(self, dim: int, config: IndexConfig | None = None, kind: Literal["exact", "hnsw"] = "exact"):
        self.dim = dim
        self.config = config or IndexConfig()
        self.kind = kind
        self.recall_at_10: float | None = None
        self.info: dict = {}  # what built it (model, cohort, patient-key salt), kept in index.json
        # check_same_thread=False: the service searches from a worker thread; SQLite itself is serialized.
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute(_SCHEMA)
        self.vectors = faiss.IndexIDMap2(self._new_index())

    def _new_index(self) -> faiss.Index:
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        return index

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, cases: list[Case], config: IndexConfig | None = None) -> CaseIndex:
        """An index of ``cases`` (row i of ``vectors`` is case i), with approximate recall measured."""
        config = config or IndexConfig()
        vectors = _unit_rows(vectors)
        index = cls(vectors.shape[1], config, config.resolved_kind(len(cases)))
        index.add(vectors, cases)
        if index.kind != "exact" and len(cases) > RECALL_K:
            index.recall_at_10 = index._measured_recall(vectors)
        return index

    def add(self, vectors: np.ndarray, cases: list[Case]) -> list[int]:
        """Add cases; a (study, modality) already in the index is an error. Returns their ids."""
        vectors = _unit_rows(vectors)
        if len(vectors) != len(cases):
            raise MedfmError(f"index add: {len(vectors)} vectors for {len(cases)} cases")
        if vectors.shape[1] != self.dim:
            raise MedfmError(f"index add: vectors have dimension {vectors.shape[1]}, the index {self.dim}")
        start = self._next_id()
        ids = list(range(start, start + len(cases)))
        try:
            with self.db:
                self.db.executemany(f"INSERT INTO cases VALUES (?, {', '.join('?' * len(_COLUMNS))})",
                                    [(i, *asdict(c).values()) for i, c in zip(ids, cases, strict=True)])
        except sqlite3.IntegrityError:
            raise MedfmError("index add: a (study_id, modality) is already in the index; remove it first") from None
        self.vectors.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        return ids

    def remove(self, study_ids: list[str]) -> int:
        """Remove every case of these studies; returns how many were removed.

        Exact indexes drop the vectors; HNSW keeps them as graph nodes (they still route
        searches) but they can never be returned, since results come only from live rows.
        """
        marks = ", ".join("?" * len(study_ids))
        ids = [row[0] for row in self.db.execute(f"SELECT id FROM cases WHERE study_id IN ({marks})", study_ids)]
        with self.db:
            self.db.execute(f"DELETE FROM cases WHERE study_id IN ({marks})", study_ids)
        if ids and self.kind == "exact":
            self.vectors.remove_ids(np.asarray(ids, dtype=np.int64))
        return len(ids)

    def case(self, case_id: int) -> Case | None:
        """The live case with this id, or None."""
        row = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM cases WHERE id = ?", (case_id,)).fetchone()
        return None if row is None else Case(*row)

    def find(self, study_id: str, modality: str | None = None) -> list[tuple[int, Case]]:
        """The live cases of a study (in one modality, if given), as ``(id, case)``."""
        where, args = "study_id = ?", [study_id]
        if modality is not None:
            where, args = where + " AND modality = ?", [*args, modality]
        return [(row[0], Case(*row[1:])) for row in self.db.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM cases WHERE {where} ORDER BY id", args)]

    def vector(self, case_id: int) -> np.ndarray:
        """The stored unit vector of a case (to search with an indexed study as the query)."""
        return self.vectors.reconstruct(int(case_id))

    def keys(self) -> set[tuple[str, str]]:
        """Every live ``(study_id, modality)``."""
        return set(self.db.execute("SELECT study_id, modality FROM cases"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM cases").fetchone()[0]

    # -- searching -----------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int = 10, *, modality: str | None = None, site: str | None = None,
               device: str | None = None, date_from: str | None = None, date_to: str | None = None,
               exclude_patient: str | None = None) -> list[Hit]:
        """The ``k`` most similar live cases that pass every given filter, best first.

        ``exclude_patient``: the query's own patient key; their other studies are not
        "similar prior cases" and are left out unless the caller passes None.
        """
        where, args = ["1"], []
        for column, value in (("modality", modality), ("site", site), ("device", device)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if date_from is not None:
            where.append("date >= ?")
            args.append(date_from)
        if date_to is not None:
            where.append("date <= ?")
            args.append(date_to)
        if exclude_patient is not None:
            where.append("patient_key != ?")
            args.append(exclude_patient)
        allowed = np.asarray([r[0] for r in self.db.execute(f"SELECT id FROM cases WHERE {' AND '.join(where)}",
                                                            args)], dtype=np.int64)
        if len(allowed) == 0:
            return []
        scores, ids = self._search(_unit_rows(query.reshape(1, -1)), min(k, len(allowed)), allowed)
        rows = {r[0]: r[1:] for r in self.db.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM cases WHERE id IN ({', '.join('?' * len(ids[0]))})",
            [int(i) for i in ids[0]])}
        return [Hit(int(i), Case(*rows[int(i)]), float(s)) for s, i in zip(scores[0], ids[0], strict=True)
                if i >= 0 and int(i) in rows]

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        selector = None if allowed is None else faiss.IDSelectorBatch(allowed)
        if self.kind == "exact":
            params = faiss.SearchParameters(sel=selector)
        else:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.config.ef_search, k))
        return self.vectors.search(queries, k, params=params)

    def _measured_recall(self, vectors: np.ndarray) -> float:
        """Recall@10 of this index against exact inner product, on stored vectors as queries."""
        rng = np.random.default_rng(0)
        queries = vectors[rng.choice(len(vectors), min(self.config.recall_queries, len(vectors)), replace=False)]
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(vectors)
        _, truth = exact.search(queries, RECALL_K)
        ids = np.asarray([r[0] for r in self.db.execute("SELECT id FROM cases ORDER BY id")], dtype=np.int64)
        _, found = self._search(queries, RECALL_K, None)
        truth_ids = ids[truth]
        return float(np.mean([len(set(t) & set(f)) / RECALL_K for t, f in zip(truth_ids, found, strict=True)]))

    def _next_id(self) -> int:
        # Past every id FAISS holds: HNSW keeps removed vectors under their ids, never reuse one.
        ids = faiss.vector_to_array(self.vectors.id_map)
        return int(ids.max()) + 1 if len(ids) else 0

    # -- files ---------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write a new version under ``directory`` and make it current; older versions are removed."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        version = directory / f"v-{uuid.uuid4().hex[:12]}"
        version.mkdir()
        faiss.write_index(self.vectors, str(version / "vectors.faiss"))
        with sqlite3.connect(version / "cases.sqlite") as out:
            self.db.backup(out)
        out.close()
        files = {name: sha256_file(version / name) for name in ("vectors.faiss", "cases.sqlite")}
        write_json_atomic(version / "index.json", {
            "format": FORMAT, "dim": self.dim, "kind": self.kind, "cases": len(self),
            "recall_at_10": self.recall_at_10, "config": self.config.model_dump(mode="json"), "info": self.info,
            "files": files})
        write_text_atomic(directory / CURRENT, version.name + "\n")  # the switch: atomic rename
        for old in directory.glob("v-*"):
            if old != version:
                shutil.rmtree(old, ignore_errors=True)
        return version

    @classmethod
    def load(cls, directory: str | Path) -> CaseIndex:
        """The current version of a saved index, after checking every file against its recorded hash.

        Raises:
            IndexFileError: no ``CURRENT``, a missing file, or a file whose SHA-256 differs.
        """
        directory = Path(directory)
        try:
            version = directory / (directory / CURRENT).read_text().strip()
            meta = json.loads((version / "index.json").read_text())
        except (OSError, ValueError) as err:
            raise IndexFileError(directory, f"not a complete medfm index ({err})") from None
        if meta.get("format") != FORMAT:
            raise IndexFileError(version / "index.json", f"format {meta.get('format')!r}, expected {FORMAT!r}")
        for name, digest in meta["files"].items():
            path = version / name
            if not path.is_file() or sha256_file(path) != digest:
                raise IndexFileError(path, "missing, or changed since the index was written (SHA-256 differs)")
        index = cls(meta["dim"], IndexConfig.model_validate(meta["config"]), meta["kind"])
        index.recall_at_10 = meta["recall_at_10"]
        index.info = meta.get("info", {})
        index.vectors = faiss.read_index(str(version / "vectors.faiss"))
        with sqlite3.connect(version / "cases.sqlite") as source:
            source.backup(index.db)
        source.close()
        return index


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise MedfmError(f"index: expected a (n, dim) array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)

