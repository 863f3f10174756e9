"""Content fingerprints: which images are the same file content, whatever their names.

A model directory keeps the fingerprints of the images it was trained on, so ``graft evaluate``
can say how many evaluation images the model has already seen (a leak is never silent).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from graft.data.storage import is_uri, read_bytes

__all__ = ["content_fingerprint", "content_fingerprints", "read_fingerprints", "write_fingerprints"]

_NONE = np.uint64(0)


def content_fingerprint(path: str | os.PathLike) -> int:
    """The first 8 bytes of the file's SHA-256 as an integer (0 for a file that cannot be read);
    ``path`` may be a URI (``s3://...``)."""
    digest = hashlib.sha256()
    try:
        if is_uri(path):  # a remote object: read whole (images are small), hashed the same way
            digest.update(read_bytes(path))
            return int.from_bytes(digest.digest()[:8], "little") or 1
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return 0
    return int.from_bytes(digest.digest()[:8], "little") or 1


_BLOCK = 1024  # files handed to the threads at a time


def content_fingerprints(paths: Iterable[str | os.PathLike], workers: int = 4) -> np.ndarray:
    """Fingerprints of many files (``uint64``), in their order, read in threads (hashing
    releases the GIL) a block at a time: the queued work does not grow with the number of files
    (``ThreadPoolExecutor.map`` queues a task per file at once, about 1.5 KB each)."""
    paths = iter(paths)
    blocks = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while block := list(islice(paths, _BLOCK)):
            blocks.append(np.fromiter(pool.map(content_fingerprint, block), dtype=np.uint64,
                                      count=len(block)))
    return np.concatenate(blocks) if blocks else np.zeros(0, np.uint64)


def write_fingerprints(path: str | os.PathLike, fingerprints: np.ndarray) -> Path:
    """Sorted, unique, little-endian ``uint64`` (no pickle: plain bytes)."""
    values = np.unique(np.asarray(fingerprints, dtype=np.uint64))
    values = values[values != _NONE].astype("<u8")
    path = Path(path)
    path.write_bytes(values.tobytes())
    return path


def read_fingerprints(path: str | os.PathLike) -> np.ndarray:
    """The fingerprints written by :func:`write_fingerprints`."""
    return np.frombuffer(Path(path).read_bytes(), dtype="<u8").astype(np.uint64)
