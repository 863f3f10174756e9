"""Content hashes of the images the cache has seen, keyed by their cache keys.

A cache key names a file as it was listed (path, size, mtime); a content hash names what is in it,
whatever its name (the first 8 bytes of its SHA-256, see :mod:`graft.data.contents`). Training's
leak check and ``graft evaluate``'s overlap count compare content hashes. Extraction hashes the
bytes it already read to decode the image and keeps the hash here, so a warm run reads no image.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

import numpy as np

from graft.config import resolve_cache_dir
from graft.data.contents import fill_content_hashes

__all__ = ["ContentIndex"]

_CHUNK = 500  # keys per SQL query (well under SQLite's variable limit)


class ContentIndex:
    """``contents.sqlite`` in the cache folder: cache key -> content hash, for every backbone
    (an image's content does not depend on the network that reads it)."""

    FILE = "contents.sqlite"

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        path = resolve_cache_dir(cache_dir) / self.FILE
        self._db = sqlite3.connect(path, timeout=120, check_same_thread=False)
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS hashes (key TEXT PRIMARY KEY, "
                             "hash INTEGER NOT NULL) WITHOUT ROWID")
        self._pending: dict[str, int] = {}

    def add(self, key: str, value: int) -> None:
        """Keep ``value`` (an unsigned 64-bit hash) for ``key``; written by :meth:`flush`."""
        self._pending[key] = int(value)

    def flush(self) -> None:
        if not self._pending:
            return
        signed = np.array(list(self._pending.values()), np.uint64).view(np.int64).tolist()
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?)",
                                 zip(self._pending, signed))
        self._pending = {}

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The hash of each key (``uint64``; 0 where none is kept)."""
        self.flush()
        found: dict[str, int] = {}
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            chunk = list(dict.fromkeys(keys[start: start + _CHUNK]))
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(
                f"SELECT key, hash FROM hashes WHERE key IN ({marks})", chunk))
        signed = np.fromiter((found.get(key, 0) for key in keys), np.int64, count=len(keys))
        return signed.view(np.uint64)

    def resolve(self, keys: Sequence[str], paths: Sequence[str], *, workers: int = 4
                ) -> np.ndarray:
        """The hash of each key, reading the files (``paths``, in the same order) only for the
        keys without one (extracted by another engine, or before hashes were kept), and keeping
        what they give."""
        kept = self.get(keys)
        values = fill_content_hashes(kept, paths.__getitem__, workers=workers)
        for i in np.flatnonzero((kept == 0) & (values != 0)).tolist():
            self.add(keys[i], int(values[i]))
        self.flush()
        return values

    def close(self) -> None:
        self.flush()
        self._db.close()
