"""``graft cache info|prune``: what the feature cache holds, and trimming it.

The cache (``$GRAFT_CACHE_DIR``, else the user cache dir) has one folder of feature shards per
backbone key (``features/<key>/``, indexed by ``index.sqlite``) and the exported graphs
(``onnx/<backbone>-<key>.onnx``). Reading the sizes opens only the indexes.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.config import resolve_cache_dir
from graft.errors import ConfigError
from graft.features.contents import ContentIndex
from graft.features.store import index_counts

__all__ = ["CacheEntry", "cache_entries", "prune_cache"]


@dataclass
class CacheEntry:
    """One backbone's cached features (and its exported graphs)."""

    key: str
    backbone: str
    path: Path
    images: int
    failures: int
    shards: int
    bytes: int
    last_used: float
    graphs: list[Path]

    @property
    def graph_bytes(self) -> int:
        return sum(_size(g) for g in self.graphs)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "backbone": self.backbone, "path": str(self.path),
                "images": self.images, "failures": self.failures, "shards": self.shards,
                "bytes": self.bytes, "graph_bytes": self.graph_bytes,
                "last_used": self.last_used, "graphs": [str(g) for g in self.graphs]}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _graphs(onnx: Path, key: str) -> list[Path]:
    return sorted(p for p in onnx.glob(f"*-{key}.onnx")) if onnx.is_dir() else []


def _backbone_name(stem: str) -> str:
    """``tf_efficientnet_lite0`` from a graph name; int8 graphs are ``NAME-<fp32 key>-int8``."""
    match = re.fullmatch(r"(.+)-[0-9a-f]{20}-int8", stem)
    return f"{match.group(1)} (int8)" if match else stem


def _read_index(folder: Path) -> tuple[int, int, float | None]:
    index = folder / "index.sqlite"
    if not index.is_file():
        return -1, -1, None
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)
    try:
        return index_counts(db)
    except sqlite3.Error:
        return -1, -1, None
    finally:
        db.close()


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every backbone cache under ``cache_dir``, most recently used first."""
    root = resolve_cache_dir(cache_dir)
    onnx = root / "onnx"
    entries = []
    for folder in sorted((root / "features").glob("*")) if (root / "features").is_dir() else []:
        if not folder.is_dir():
            continue
        shards = list(folder.glob("shard-*.h5"))
        images, failures, used = _read_index(folder)
        graphs = _graphs(onnx, folder.name)
        name = _backbone_name(graphs[0].name[: -len(f"-{folder.name}.onnx")]) if graphs else "?"
        size = sum(_size(p) for p in folder.iterdir() if p.is_file())
        last = used or max((_size(p) and p.stat().st_mtime for p in shards), default=0.0)
        entries.append(CacheEntry(folder.name, name, folder, images, failures, len(shards), size,
                                  float(last), graphs))
    return sorted(entries, key=lambda e: -e.last_used)


def prune_cache(cache_dir: str | os.PathLike | None = None, *, older_than_days: float | None = None,
                keys: list[str] | None = None, everything: bool = False,
                dry_run: bool = False) -> list[CacheEntry]:
    """Delete backbone caches (features and graphs): those unused for ``older_than_days``, those
    in ``keys``, or ``everything``. Returns what was (or, with ``dry_run``, would be) deleted."""
    if older_than_days is None and not keys and not everything:
        raise ConfigError("Say what to prune: older_than_days, keys, or everything.",
                          parameter=("older_than_days", "keys", "everything"))
    if older_than_days is not None and older_than_days < 0:
        raise ConfigError(f"older_than_days must be >= 0. Got {older_than_days!r}.",
                          parameter="older_than_days")
    entries = cache_entries(cache_dir)
    if keys:
        unknown = sorted(set(keys) - {e.key for e in entries})
        if unknown:
            raise ConfigError(f"No cache with key(s) {', '.join(unknown)}. See 'graft cache info'.")
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    chosen = [e for e in entries if everything or (keys and e.key in keys)
              or (cutoff is not None and e.last_used < cutoff)]
    if not dry_run:
        for entry in chosen:
            shutil.rmtree(entry.path, ignore_errors=True)
            for graph in entry.graphs:
                graph.unlink(missing_ok=True)
        if everything:  # the images' content hashes go with the last backbone cache
            (resolve_cache_dir(cache_dir) / ContentIndex.FILE).unlink(missing_ok=True)
    return chosen
