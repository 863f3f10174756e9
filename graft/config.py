"""Paths and environment settings shared by every stage."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["resolve_cache_dir"]


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache directory: explicit > ``GRAFT_CACHE_DIR`` > the platform user cache dir."""
    if cache_dir is None:
        cache_dir = os.environ.get("GRAFT_CACHE_DIR") or platformdirs.user_cache_dir("graft")
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
