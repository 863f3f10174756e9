"""Content hashes: which images are the same file content, whatever their names.

A model directory keeps the content hashes of the images it was trained on, so ``graft evaluate``
can say how many evaluation images the model has already seen (a leak is never silent). They are
not the feature cache's keys (:func:`graft.features.store.cache_key`: path, size and mtime).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.storage import is_uri, read_bytes

__all__ = ["content_hash", "content_hashes", "fill_content_hashes", "hash_bytes",
           "read_content_hashes", "write_content_hashes"]

_NONE = np.uint64(0)


def _as_int(digest: Any) -> int:
    """The first 8 bytes of a SHA-256 as an integer (never 0: 0 means unknown)."""
    return int.from_bytes(digest.digest()[:8], "little") or 1


def hash_bytes(data: bytes) -> int:
    """The content hash of ``data``: the first 8 bytes of its SHA-256, as an integer."""
    return _as_int(hashlib.sha256(data))


def content_hash(path: str | os.PathLike) -> int:
    """:func:`hash_bytes` of the file's content (0 for a file that cannot be read); ``path`` may
    be a URI (``s3://...``)."""
    digest = hashlib.sha256()
    try:
        if is_uri(path):  # a remote object: read whole (images are small), hashed the same way
            return hash_bytes(read_bytes(path))
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return 0
    return _as_int(digest)


_BLOCK = 1024  # files handed to the threads at a time


def content_hashes(paths: Iterable[str | os.PathLike], workers: int = 4) -> np.ndarray:
    """Content hashes of many files (``uint64``), in their order, read in threads (hashing
    releases the GIL) a block at a time, so the queued work does not grow with the number of
    files."""
    paths = iter(paths)
    blocks = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while block := list(islice(paths, _BLOCK)):
            blocks.append(np.fromiter(pool.map(content_hash, block), dtype=np.uint64,
                                      count=len(block)))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.uint64)


def fill_content_hashes(known: np.ndarray, path_of: Callable[[int], str],
                        workers: int = 4) -> np.ndarray:
    """``known`` (``uint64``, 0 where unknown) with each unknown one read from its file,
    ``path_of(i)`` naming row ``i``'s; only those files are read."""
    filled = np.array(known, dtype=np.uint64)
    missing = np.flatnonzero(filled == 0)
    if len(missing):
        filled[missing] = content_hashes((path_of(i) for i in missing.tolist()),
                                         workers=workers)
    return filled


def write_content_hashes(path: str | os.PathLike, hashes: np.ndarray) -> Path:
    """Sorted, unique, little-endian ``uint64`` (no pickle: plain bytes)."""
    values = np.unique(np.asarray(hashes, dtype=np.uint64))
    values = values[values != _NONE].astype("<u8")
    path = Path(path)
    path.write_bytes(values.tobytes())
    return path


def read_content_hashes(path: str | os.PathLike) -> np.ndarray:
    """The hashes written by :func:`write_content_hashes`."""
    return np.frombuffer(Path(path).read_bytes(), dtype="<u8").astype(np.uint64)
