"""Similar-case index: unit vectors in FAISS, what a radiologist sees about each case in SQLite.

One case is one study's embedding in one modality (a study with a CXR and an ECG is two
cases, found by either). The FAISS id of a case is its SQLite row id, so a metadata
filter (modality, site, device, date range, cohorts, "not this patient") becomes the set of
allowed ids handed to FAISS's search (a bitmap, ``IDSelectorBitmap``): results are
filtered inside the search, never over-fetched and thinned afterwards. The filter
columns are mirrored in numpy arrays, so a filter over a million cases costs a few
milliseconds, not a SQLite scan; a search without filters passes no selector at all
(FAISS's fastest path) unless removed cases must be skipped.

On disk an index is a folder of versions and a ``CURRENT`` file naming the live one,
replaced atomically after the new version is complete (the way LevelDB switches
manifests): a crash while saving leaves the previous version readable. Every file of a
version is listed with its SHA-256 in ``index.json`` and checked on load.

Format 2 records each case's cohort (the service limits a token to its cohorts). A format 1
index is upgraded when loaded if it holds one cohort (every case is that cohort's); one
that holds several is refused, since which case came from which cohort was never recorded.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from medfm.atomic import sha256_file, write_json_atomic, write_text_atomic
from medfm.config import Config
from medfm.errors import MedfmError, MedfmReadError

FORMAT = "medfm-index/2"
FORMAT_WITHOUT_COHORTS = "medfm-index/1"
CURRENT = "CURRENT"
RECALL_K = 10
# k-means points per IVF cell: FAISS warns below 39; beyond ~64 the cells barely move and
# training a million vectors into 4,000 cells took 209 s with all of them (256 per cell).
IVF_TRAINING_PER_LIST = 64
# Up to this many queries, an unfiltered exact search is one BLAS product over the stored vectors instead of
# FAISS's flat scan, which gives each query one thread: a single query then reads memory at every thread's
# pace (measured at 1M x 128: 18 ms instead of 55 ms on 2 cores; docs/benchmarks.md).
SCAN_QUERIES = 8


class IndexFileError(MedfmReadError):
    """An index folder that is missing, incomplete, or does not match its recorded hashes."""


class IndexConfig(Config):
    """How vectors are searched.

    Attributes:
        kind: ``exact`` (inner product over every vector), ``ivf`` (inverted lists: k-means
            cells, the ``nprobe`` nearest searched), ``hnsw`` (graph), or ``auto``: exact
            up to ``exact_below`` cases, ``approximate`` above.
        approximate: the kind ``auto`` picks for large collections. IVF by default: at a
            million 128-d vectors on 2 cores it builds in under a minute and met recall@10
            0.95 within 1 ms, where an HNSW graph that builds in minutes stopped near 0.93
            (docs/benchmarks.md).
        ivf_lists: number of IVF cells; None: 4·sqrt(n), the usual rule.
        nprobe: IVF cells searched per query.
        hnsw_m, ef_construction, ef_search: HNSW's links per node and beam widths.
        recall_queries: stored vectors used as queries when measuring, at build time, the
            approximate index's recall@10 against exact search.
    """

    kind: Literal["auto", "exact", "ivf", "hnsw"] = "auto"
    exact_below: int = Field(50_000, ge=0)
    approximate: Literal["ivf", "hnsw"] = "ivf"
    ivf_lists: int | None = Field(None, ge=1)
    nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(128, ge=8)
    recall_queries: int = Field(500, ge=1)

    def resolved_kind(self, n: int) -> Literal["exact", "ivf", "hnsw"]:
        if self.kind != "auto":
            return self.kind
        return "exact" if n < self.exact_below else self.approximate

    def lists_for(self, n: int) -> int:
        """IVF cells for ``n`` vectors: at least 39 training points per cell (FAISS's k-means minimum)."""
        wanted = self.ivf_lists or int(4 * np.sqrt(max(n, 1)))
        return max(1, min(wanted, n // 39))


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
    cohort: str | None = None  # the name of the cohort the study was indexed from


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

    def __init__(self, dim: int, config: IndexConfig | None = None,
                 kind: Literal["exact", "ivf", "hnsw"] = "exact", ivf_lists: int = 1):
        self.dim = dim
        self.config = config or IndexConfig()
        self.kind = kind
        self.recall_at_10: float | None = None
        self.info: dict = {}  # what built it (model, cohort, patient-key salt), kept in index.json
        # check_same_thread=False: the service searches from a worker thread; SQLite itself is serialized.
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.execute(_SCHEMA)
        self._filters: _FilterColumns | None = None  # rebuilt after add/remove
        self.vectors = faiss.IndexIDMap2(self._new_index(ivf_lists))

    def _new_index(self, ivf_lists: int) -> faiss.Index:
        if self.kind == "exact":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf":
            self._quantizer = faiss.IndexFlatIP(self.dim)  # referenced by the IVF index: keep it alive
            return faiss.IndexIVFFlat(self._quantizer, self.dim, ivf_lists, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        return index

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, cases: list[Case], config: IndexConfig | None = None) -> CaseIndex:
        """An index of ``cases`` (row i of ``vectors`` is case i), with approximate recall measured."""
        config = config or IndexConfig()
        vectors = _unit_rows(vectors)
        index = cls(vectors.shape[1], config, config.resolved_kind(len(cases)), config.lists_for(len(cases)))
        if index.kind == "ivf":  # k-means cells from (a sample of) these vectors; later adds reuse them
            index.vectors.train(_training_sample(vectors, IVF_TRAINING_PER_LIST * config.lists_for(len(cases))))
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
        if not self.vectors.is_trained:
            raise MedfmError("index add: an IVF index must be built (trained) with CaseIndex.build first")
        start = self._next_id()
        ids = list(range(start, start + len(cases)))
        try:
            with self.db:
                self.db.executemany(f"INSERT INTO cases VALUES (?, {', '.join('?' * len(_COLUMNS))})",
                                    [(i, *asdict(c).values()) for i, c in zip(ids, cases, strict=True)])
        except sqlite3.IntegrityError:
            raise MedfmError("index add: a (study_id, modality) is already in the index; remove it first") from None
        self.vectors.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
        self._filters = None
        return ids

    def remove(self, study_ids: list[str]) -> int:
        """Remove every case of these studies; returns how many were removed.

        Exact indexes drop the vectors; IVF and HNSW keep them (an HNSW node still routes
        searches) but they can never be returned: searches skip every id without a live row.
        """
        marks = ", ".join("?" * len(study_ids))
        ids = [row[0] for row in self.db.execute(f"SELECT id FROM cases WHERE study_id IN ({marks})", study_ids)]
        with self.db:
            self.db.execute(f"DELETE FROM cases WHERE study_id IN ({marks})", study_ids)
        if ids and self.kind == "exact":
            self.vectors.remove_ids(np.asarray(ids, dtype=np.int64))
        self._filters = None
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

    def counts(self) -> dict[tuple[str | None, str], int]:
        """Live cases per ``(cohort, modality)``."""
        rows = self.db.execute("SELECT cohort, modality, COUNT(*) FROM cases GROUP BY cohort, modality")
        return {(cohort, modality): count for cohort, modality, count in rows}

    # -- searching -----------------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int = 10, *, modality: str | None = None, site: str | None = None,
               device: str | None = None, date_from: str | None = None, date_to: str | None = None,
               exclude_patient: str | None = None, cohorts: Collection[str] | None = None) -> list[Hit]:
        """The ``k`` most similar live cases that pass every given filter, best first.

        ``exclude_patient``: the query's own patient key; their other studies are not
        "similar prior cases" and are left out unless the caller passes None.
        ``cohorts``: only cases of these cohorts (None: every case; empty: none). Like the other
        filters it limits the candidates inside the search, so ``k`` cases come back when
        other cohorts hold closer ones.
        """
        allowed, count = self._allowed(modality=modality, site=site, device=device, date_from=date_from,
                                       date_to=date_to, exclude_patient=exclude_patient, cohorts=cohorts)
        if count == 0:
            return []
        scores, ids = self._search(_unit_rows(query.reshape(1, -1)), min(k, count), allowed)
        found = [int(i) for i in ids[0] if i >= 0]
        rows = {r[0]: r[1:] for r in self.db.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM cases WHERE id IN ({', '.join('?' * len(found))})", found)}
        return [Hit(int(i), Case(*rows[int(i)]), float(s)) for s, i in zip(scores[0], ids[0], strict=True)
                if int(i) in rows]

    def _allowed(self, **filters) -> tuple[np.ndarray | None, int]:
        """Which ids a search may return (bool per id; None: every id FAISS holds) and how many."""
        columns = self._filters = self._filters or _FilterColumns.of(self)
        mask = columns.matching(**filters)
        if mask is None and columns.size == self.vectors.ntotal:
            return None, columns.size
        allowed = np.zeros(columns.id_space, dtype=bool)
        allowed[columns.ids if mask is None else columns.ids[mask]] = True
        return allowed, columns.size if mask is None else int(mask.sum())

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search; ``allowed`` (bool per id) becomes a bitmap selector, kept referenced until FAISS returns."""
        if self.kind == "exact" and allowed is None and len(queries) <= SCAN_QUERIES:
            return self._scan(queries, k)
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")
        selector = None if bitmap is None else faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        if self.kind == "exact":
            params = faiss.SearchParameters(sel=selector)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.config.nprobe)
        else:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.config.ef_search, k))
        result = self.vectors.search(queries, k, params=params)
        del bitmap
        return result

    def _scan(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of a few unfiltered queries: inner products as one BLAS product, then a partial sort."""
        flat = faiss.downcast_index(self.vectors.index)
        n = flat.ntotal
        if n == 0:
            return np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1, np.int64)
        stored = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)  # FAISS's memory, no copy
        scores = np.ascontiguousarray((stored @ np.ascontiguousarray(queries, dtype=np.float32).T).T)
        k = min(k, n)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        rows = np.take_along_axis(top, order, axis=1)
        ids = faiss.rev_swig_ptr(self.vectors.id_map.data(), n)[rows]
        return np.take_along_axis(scores, rows, axis=1), ids.astype(np.int64)

    def _measured_recall(self, vectors: np.ndarray) -> float:
        """Recall@10 of this index against exact inner product, on stored vectors as queries."""
        rng = np.random.default_rng(0)
        queries = vectors[rng.choice(len(vectors), min(self.config.recall_queries, len(vectors)), replace=False)]
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(vectors)
        _, truth = exact.search(queries, RECALL_K)
        ids = np.asarray([r[0] for r in self.db.execute("SELECT id FROM cases ORDER BY id")], dtype=np.int64)
        _, found = self._search(queries, RECALL_K, self._allowed()[0])
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
        if meta.get("format") not in (FORMAT, FORMAT_WITHOUT_COHORTS):
            raise IndexFileError(version / "index.json", f"format {meta.get('format')!r}, expected {FORMAT!r}")
        files = meta.get("files")
        if not isinstance(files, dict) or set(files) != {"vectors.faiss", "cases.sqlite"}:
            raise IndexFileError(version / "index.json", "does not record the SHA-256 of both vectors.faiss and "
                                 "cases.sqlite; refusing files that cannot be checked")
        for name, digest in files.items():
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
        if meta["format"] == FORMAT_WITHOUT_COHORTS:
            index._add_cohort_column(directory, version / "index.json")
        return index

    def _add_cohort_column(self, directory: Path, meta_path: Path) -> None:
        """Upgrade a format 1 index in memory: every case belongs to its only cohort (saving writes format 2)."""
        cohorts = list(self.info.get("cohorts", []))
        if len(cohorts) > 1:
            model = self.info.get("model", "CHECKPOINT")
            raise IndexFileError(meta_path, f"format {FORMAT_WITHOUT_COHORTS!r} does not record which of its cohorts "
                                            f"({', '.join(cohorts)}) each case came from; rebuild it: `medfm index "
                                            f"build --fresh --model {model} --cohort FIRST.yaml --out {directory}`, "
                                            f"then `medfm index add --model {model} --cohort NEXT.yaml --index "
                                            f"{directory}` for each other cohort")
        with self.db:
            self.db.execute("ALTER TABLE cases ADD COLUMN cohort TEXT")
            if cohorts:
                self.db.execute("UPDATE cases SET cohort = ?", (cohorts[0],))


@dataclass
class _FilterColumns:
    """The filterable columns of every live case as numpy arrays, row-aligned with ``ids``.

    Text columns are integer codes (a filter compares one integer per case, not a string);
    dates are ``YYYYMMDD`` integers, -1 where a case has none (it fails any date filter).
    """

    ids: np.ndarray
    id_space: int  # one past the largest id FAISS holds (removed ones included)
    codes: dict[str, np.ndarray]  # modality, site, device, patient_key, cohort
    vocabulary: dict[str, dict[str, int]]
    dates: np.ndarray

    @classmethod
    def of(cls, index: CaseIndex) -> _FilterColumns:
        names = ("modality", "site", "device", "patient_key", "cohort")
        rows = index.db.execute(f"SELECT id, date, {', '.join(names)} FROM cases ORDER BY id").fetchall()
        columns = list(zip(*rows, strict=True)) if rows else [()] * (len(names) + 2)
        codes, vocabulary = {}, {}
        for name, values in zip(names, columns[2:], strict=True):
            vocabulary[name] = {v: i for i, v in enumerate(dict.fromkeys(values))}
            codes[name] = np.fromiter((vocabulary[name][v] for v in values), np.int32, len(values))
        dates = np.fromiter((_date_number(d, strict=False) for d in columns[1]), np.int64, len(columns[1]))
        return cls(np.asarray(columns[0], dtype=np.int64), index._next_id(), codes, vocabulary, dates)

    @property
    def size(self) -> int:
        return len(self.ids)

    def matching(self, *, modality=None, site=None, device=None, date_from=None, date_to=None,
                 exclude_patient=None, cohorts=None) -> np.ndarray | None:
        """Rows passing every given filter (None: no filter given)."""
        tests = [self._equal(name, value) for name, value in (("modality", modality), ("site", site),
                                                               ("device", device)) if value is not None]
        if date_from is not None:
            tests.append((self.dates >= 0) & (self.dates >= _date_number(date_from)))
        if date_to is not None:
            tests.append((self.dates >= 0) & (self.dates <= _date_number(date_to)))
        if exclude_patient is not None:
            tests.append(~self._equal("patient_key", exclude_patient))
        if cohorts is not None:
            known = self.vocabulary["cohort"]
            tests.append(np.isin(self.codes["cohort"], [known[c] for c in cohorts if c in known]))
        return np.logical_and.reduce(tests) if tests else None

    def _equal(self, name: str, value: str) -> np.ndarray:
        return self.codes[name] == self.vocabulary[name].get(value, -1)


def _date_number(date: str | None, strict: bool = True) -> int:
    """``2021-03-04`` (or a longer ISO timestamp) → 20210304; -1 for no date.

    A stored date that is not ISO counts as none (``strict=False``); a filter's is an error.
    """
    digits = (date or "")[:10].replace("-", "")
    if len(digits) == 8 and digits.isdigit():
        return int(digits)
    if strict:
        raise MedfmError(f"date filter {date!r} is not ISO 8601 (YYYY-MM-DD)")
    return -1


def _training_sample(vectors: np.ndarray, size: int) -> np.ndarray:
    if len(vectors) <= size:
        return vectors
    return vectors[np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise MedfmError(f"index: expected a (n, dim) array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)

