"""Feature storage in HDF5: a crash-safe per-backbone cache, and self-describing feature files.

Cache (``<cache>/features/<backbone key>/shard-*.h5``): every image's features, keyed by a
cache key of its file (resolved path, size, mtime). A shard is written to a temp file and renamed
when complete, so killing extraction loses at most one shard of work and never leaves a corrupt
file; the next run resumes from the shards that exist.

Feature file (``graft extract --out F.h5``): ``features``, ``labels``, ``label_names``, ``paths``,
``split``, with each backbone's config (preprocessing included) as attributes; written in chunks (memory
stays flat), then renamed into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from graft.errors import DataError

__all__ = [
    "CHUNK_ROWS",
    "FEATURE_FILE_FORMAT",
    "CachedFeatures",
    "FeatureCache",
    "FeatureFileWriter",
    "FeatureSet",
    "cache_key",
    "chunk_bounds",
    "forget_folders",
    "in_chunks",
    "load_feature_file",
    "read_rows",
]

FEATURE_FILE_FORMAT = "graft-features"
_STR = h5py.string_dtype("utf-8")


def cache_key(path: str | os.PathLike, stamp: tuple[int, int] | None = None) -> str:
    """Identity of an image file's content for caching: resolved path (or URI), size and mtime.

    ``stamp``: the ``(size, mtime_ns)`` a listing already gave (no second request for a remote
    file); looked up when not given.
    """
    from graft.data import storage

    name = os.fspath(path) if storage.is_uri(path) else _realpath(os.fspath(path))
    size, mtime_ns = stamp if stamp is not None else storage.stat(name)
    return hashlib.sha1(f"{name}\0{size}\0{mtime_ns}".encode()).hexdigest()


def _realpath(path: str) -> str:
    """``os.path.realpath``, with each folder resolved once, not at every image in it (which
    costs a system call per component of the path)."""
    folder, name = os.path.split(path)
    if not os.path.isabs(folder) or name in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(_real_folder(folder), name)


@functools.lru_cache(maxsize=1024)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def forget_folders() -> None:
    """Resolve folders again in :func:`cache_key` (each extraction starts with this: a
    symlinked folder may point elsewhere since the last one)."""
    _real_folder.cache_clear()


def _atomic_h5(path: Path):
    """Open a temp HDF5 file beside ``path``; the caller renames it into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


_LOOKUP_CHUNK = 500  # keys per SQL query (well under SQLite's variable limit)


def index_counts(db: sqlite3.Connection) -> tuple[int, int, float | None]:
    """Images, failures and last use recorded in a cache's ``index.sqlite``."""
    images, = db.execute("SELECT COUNT(*) FROM rows").fetchone()
    failures, = db.execute("SELECT COUNT(*) FROM failures").fetchone()
    used = db.execute("SELECT value FROM meta WHERE name = 'last_used'").fetchone()
    return int(images), int(failures), float(used[0]) if used else None


def _chunks(items: list[str], size: int = _LOOKUP_CHUNK) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start: start + size]


class FeatureCache:
    """Features of every image ever extracted with one backbone (one folder of shards).

    ``index.sqlite`` beside the shards maps each key to its shard and row, so opening the cache
    reads no shard and holds no per-key state in memory, however many images it has seen. Shards
    the index does not list (a cache written before the index existed, or a crash between a
    shard's rename and its indexing) are indexed when the cache is opened; rows of shards deleted
    by hand are dropped.
    """

    INDEX = "index.sqlite"

    def __init__(self, root: str | os.PathLike, num_features: int, shard_size: int = 512) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.num_features = int(num_features)
        self.shard_size = int(shard_size)
        self._db = sqlite3.connect(self.root / self.INDEX, timeout=120, check_same_thread=False)
        with self._db:
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, shard TEXT NOT NULL,
                                                 row INTEGER NOT NULL) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY,
                                                     reason TEXT NOT NULL) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, rows INTEGER NOT NULL,
                                                   bytes INTEGER NOT NULL, created REAL NOT NULL);
                CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
            """)
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_used', ?)",
                             (str(time.time()),))
        self._pending_keys: list[str] = []
        self._pending_rows: list[np.ndarray] = []
        self._pending_failed: dict[str, str] = {}
        self.refresh()

    def close(self) -> None:
        self._db.close()

    def refresh(self) -> None:
        """Index shards written since the index last saw them; forget shards that are gone."""
        known = {name for (name,) in self._db.execute("SELECT name FROM shards")}
        on_disk = {p.name for p in self.root.glob("shard-*.h5")}
        for name in sorted(on_disk - known):
            with h5py.File(self.root / name, "r") as handle:
                keys = list(handle["keys"].asstr()[:])
                failed = (dict(zip(handle["failed_keys"].asstr()[:],
                                   handle["failed_reasons"].asstr()[:]))
                          if "failed_keys" in handle else {})
            self._index_shard(name, keys, failed)
        gone = sorted(known - on_disk)
        if gone:
            with self._db:
                self._db.executemany("DELETE FROM rows WHERE shard = ?", [(n,) for n in gone])
                self._db.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in gone])

    def _index_shard(self, name: str, keys: list[str], failed: dict[str, str]) -> None:
        path = self.root / name
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)",
                                 [(key, name, row) for row, key in enumerate(keys)])
            self._db.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?)",
                                 list(failed.items()))
            self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)",
                             (name, len(keys), path.stat().st_size, path.stat().st_mtime))

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM rows WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def failure(self, key: str) -> str | None:
        """The reason an image failed before, if it did (failures are cached too)."""
        return self.lookup([key])[1].get(key)

    def lookup(self, keys: list[str]) -> tuple[set[str], dict[str, str]]:
        """Which of ``keys`` are cached, and why the others failed before (if they did)."""
        present: set[str] = set()
        failed: dict[str, str] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(chunk))
            present.update(k for (k,) in self._db.execute(
                f"SELECT key FROM rows WHERE key IN ({marks})", chunk))
            failed.update(self._db.execute(
                f"SELECT key, reason FROM failures WHERE key IN ({marks})", chunk))
        return present, {k: v for k, v in failed.items() if k not in present}

    def info(self) -> dict[str, Any]:
        """Images, failures, shards, bytes on disk and when it was last opened."""
        images, failures, _ = index_counts(self._db)
        shards, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) "
                                        "FROM shards").fetchone()
        return {"images": images, "failures": failures, "shards": int(shards),
                "bytes": int(size) + (self.root / self.INDEX).stat().st_size}

    def add(self, keys: Iterable[str], features: np.ndarray) -> None:
        """Buffer features; a shard is written each time ``shard_size`` rows are buffered."""
        keys = list(keys)
        features = np.asarray(features, dtype=np.float32)
        if features.shape != (len(keys), self.num_features):
            raise ValueError(
                f"Expected features of shape {(len(keys), self.num_features)}, got {features.shape}."
            )
        self._pending_keys.extend(keys)
        self._pending_rows.append(features)
        if len(self._pending_keys) >= self.shard_size:
            self.flush()

    def add_failure(self, key: str, reason: str) -> None:
        self._pending_failed[key] = reason

    def flush(self) -> None:
        """Write buffered rows as one complete shard (temp file, then atomic rename), then index
        it."""
        if not self._pending_keys and not self._pending_failed:
            return
        name = f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.h5"
        target = self.root / name
        tmp = _atomic_h5(target)
        rows = (np.concatenate(self._pending_rows) if self._pending_rows
                else np.zeros((0, self.num_features), np.float32))
        try:
            with h5py.File(tmp, "w") as handle:
                handle.create_dataset("keys", data=np.array(self._pending_keys, dtype=object),
                                      dtype=_STR)
                handle.create_dataset("features", data=rows)
                if self._pending_failed:
                    handle.create_dataset("failed_keys", data=list(self._pending_failed), dtype=_STR)
                    handle.create_dataset("failed_reasons", data=list(self._pending_failed.values()),
                                          dtype=_STR)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._index_shard(name, self._pending_keys, self._pending_failed)
        self._pending_keys, self._pending_rows, self._pending_failed = [], [], {}

    def get(self, keys: list[str], out: np.ndarray | None = None) -> np.ndarray:
        """Features for ``keys`` (all must be cached), read shard by shard (into ``out`` if
        given: an (N, num_features) float32 array or view)."""
        if out is None:
            out = np.empty((len(keys), self.num_features), dtype=np.float32)
        positions: dict[str, list[int]] = {}
        for position, key in enumerate(keys):
            positions.setdefault(key, []).append(position)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        found = 0
        for chunk in _chunks(list(positions)):
            marks = ",".join("?" * len(chunk))
            for key, shard, row in self._db.execute(
                    f"SELECT key, shard, row FROM rows WHERE key IN ({marks})", chunk):
                found += 1
                by_shard.setdefault(shard, []).extend((row, p) for p in positions[key])
        if found != len(positions):
            raise KeyError(f"{len(positions) - found} of the keys are not in the cache {self.root}.")
        for shard, pairs in by_shard.items():
            pairs.sort()
            rows = np.array([r for r, _ in pairs])
            where = np.array([p for _, p in pairs])
            with h5py.File(self.root / shard, "r") as handle:
                data = handle["features"]
                # One contiguous read beats h5py fancy indexing for scattered rows.
                block = data[rows.min(): rows.max() + 1]
                out[where] = block[rows - rows.min()]
        return out


CHUNK_ROWS = 8192  # rows read from the cache at a time (8192 x 1280 float32 = 40 MB)


def chunk_bounds(n_rows: int, size: int = CHUNK_ROWS) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``size`` rows."""
    return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def read_rows(X: np.ndarray | CachedFeatures, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an array, or read from the cache for a :class:`CachedFeatures`."""
    if isinstance(X, CachedFeatures):
        return X.rows(start, stop)
    return np.asarray(X[start:stop], dtype=np.float32)


def in_chunks(function: Any, X: np.ndarray | CachedFeatures, size: int = CHUNK_ROWS
              ) -> np.ndarray:
    """``function`` (rows -> one result per row) over ``X`` a chunk at a time, concatenated:
    out of core, only one chunk of features is in memory at once."""
    parts = [function(read_rows(X, start, stop)) for start, stop in chunk_bounds(len(X), size)]
    return np.concatenate(parts) if parts else function(read_rows(X, 0, 0))


class CachedFeatures:
    """A feature matrix left in the cache: its rows are read when asked for, a chunk at a time.

    What training uses out of core (``--out-of-core``), where one float32 matrix of every row
    would not fit in memory. Slicing (``features[a:b]``, ``features[index_array]``) gives another
    view and reads nothing; :meth:`rows` (and :func:`in_chunks`) read.
    """

    def __init__(self, caches: Sequence[FeatureCache], keys: Sequence[str]) -> None:
        self.caches = list(caches)
        self.keys = list(keys)
        self.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.keys), sum(cache.num_features for cache in self.caches)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, rows: slice | np.ndarray) -> CachedFeatures:
        if isinstance(rows, slice):
            return CachedFeatures(self.caches, self.keys[rows])
        rows = np.asarray(rows)
        if rows.dtype == bool:  # a mask, as numpy takes it
            rows = np.flatnonzero(rows)
        return CachedFeatures(self.caches, [self.keys[int(i)] for i in rows])

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` read from the cache, the backbones' features side by side."""
        from graft.bundle.fusion import fuse_features

        keys = self.keys[start:stop]
        return fuse_features([cache.get(keys) for cache in self.caches])



@dataclass
class FeatureSet:
    """Features with their labels, splits and provenance: one float32 matrix in memory, or
    (out of core) a :class:`CachedFeatures` view of the cache."""

    features: np.ndarray | CachedFeatures
    labels: np.ndarray
    label_names: list[str]
    paths: list[str]
    split: np.ndarray
    backbones: list[dict[str, Any]]  # one config per (fused) backbone, in feature order
    key: str
    root: str = ""
    split_source: str = ""
    split_params: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # one per row (see graft.data.contents; 0: unknown); None when the features came without
    content_hashes: np.ndarray | None = None

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of one split: views, no copy, when its rows are contiguous
        (as :func:`graft.features.extract_feature_set` arranges them)."""
        rows = np.flatnonzero(self.split == split)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            return self.features[rows[0]: rows[-1] + 1], self.labels[rows[0]: rows[-1] + 1]
        return self.features[rows], self.labels[rows]

    def read_content_hashes(self, workers: int = 4) -> np.ndarray:
        """Each row's content hash, reading the image only where none came with the features
        (a feature file from an older graft)."""
        from graft.data.contents import fill_content_hashes
        from graft.data.storage import join

        known = (np.zeros(len(self.labels), np.uint64) if self.content_hashes is None
                 else self.content_hashes)
        root = self.root or "."
        return fill_content_hashes(known, lambda i: join(root, self.paths[i]), workers=workers)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {label: count}}``."""
        from graft.data.dataset import count_by_split

        return count_by_split(self.split, [self.label_names[i] for i in self.labels])


class FeatureFileWriter:
    """A feature file of ``rows`` rows written a block at a time, so no more than a block is
    held; it appears under its name only when :meth:`finish` is reached (a failure leaves
    nothing). Use as a context manager: ``with FeatureFileWriter(out, ...) as writer:
    writer.write(...)`` then ``writer.finish(attrs)``.
    """

    def __init__(self, path: str | os.PathLike, *, num_features: int, label_names: list[str],
                 rows: int) -> None:
        self.path = Path(path)
        self.rows = rows
        self._tmp = _atomic_h5(self.path)
        self._file = h5py.File(self._tmp, "w")
        chunk_rows = max(1, (1 << 20) // max(1, 4 * num_features))  # about 1 MiB per chunk
        chunk_rows = max(1, min(chunk_rows, rows))  # a small file stays small
        columns = {"labels": np.int32, "paths": _STR, "split": _STR, "content_hashes": np.uint64}
        chunked = rows > 0  # HDF5 has no chunks for an empty dataset
        self._columns = {"features": self._file.create_dataset(
            "features", shape=(rows, num_features), dtype=np.float32,
            chunks=(chunk_rows, num_features) if chunked else None)}
        for name, dtype in columns.items():
            self._columns[name] = self._file.create_dataset(
                name, shape=(rows,), dtype=dtype,
                chunks=(min(rows, 16384),) if chunked else None)
        self._file.create_dataset("label_names", data=list(label_names), dtype=_STR)

    def __enter__(self) -> FeatureFileWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, start: int, features: np.ndarray | CachedFeatures, labels: Sequence[int],
              paths: Sequence[str], split: Sequence[str],
              content_hashes: np.ndarray | None = None) -> None:
        """Rows from ``start`` on: features, class indices, relative paths, splits and content
        hashes (0, unknown, when not given)."""
        if isinstance(features, CachedFeatures):
            features = features.rows()
        count = len(features)
        block = {"features": np.asarray(features, dtype=np.float32),
                 "labels": np.asarray(labels, dtype=np.int32), "paths": list(paths),
                 "split": list(split),
                 "content_hashes": (np.zeros(count, np.uint64) if content_hashes is None
                                    else np.asarray(content_hashes, dtype=np.uint64))}
        if any(len(values) != count for values in block.values()) or start + count > self.rows:
            raise ValueError("FeatureFileWriter.write: columns of different lengths, or rows "
                             "past the file's end")
        for name, values in block.items():
            self._columns[name][start: start + count] = values

    def finish(self, attrs: dict[str, Any]) -> Path:
        """Write the file's attributes and move it into place."""
        self._file.attrs["format"] = FEATURE_FILE_FORMAT
        self._file.attrs["format_version"] = 1
        for key, value in attrs.items():
            self._file.attrs[key] = json.dumps(value) if not isinstance(value, str) else value
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def close(self) -> None:
        """Give up an unfinished file (a no-op after :meth:`finish`)."""
        if self._file.id.valid:
            self._file.close()
        if self._tmp.exists():
            self._tmp.unlink()


def _json_attr(handle: h5py.File, name: str, default: Any) -> Any:
    if name not in handle.attrs:
        return default
    value = handle.attrs[name]
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def load_feature_file(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file written by ``graft extract``.

    Raises:
        DataError: When the file is missing, not HDF5, or not a graft feature file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Feature file {path} does not exist. Create it with 'graft extract'.")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({exc}).") from exc
    with handle:
        if handle.attrs.get("format") != FEATURE_FILE_FORMAT:
            missing = [k for k in ("features", "labels", "label_names") if k not in handle]
            raise DataError(
                f"{path} is not a graft feature file (no format attribute"
                f"{'; missing ' + ', '.join(missing) if missing else ''}). Create it with "
                f"'graft extract DATA --out {path.name}'."
            )
        backbones = _json_attr(handle, "backbones", [])
        return FeatureSet(
            features=handle["features"][:],
            labels=handle["labels"][:].astype(np.int64),
            label_names=list(handle["label_names"].asstr()[:]),
            paths=list(handle["paths"].asstr()[:]),
            split=np.array(handle["split"].asstr()[:], dtype=object),
            backbones=backbones,
            key=str(handle.attrs.get("feature_key", "")),
            root=str(handle.attrs.get("root", "")),
            split_source=str(handle.attrs.get("split_source", "")),
            split_params=_json_attr(handle, "split_params", {}),
            skipped=[tuple(x) for x in _json_attr(handle, "skipped", [])],
            content_hashes=(handle["content_hashes"][:] if "content_hashes" in handle
                            else None),
        )
