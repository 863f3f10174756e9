"""Shared fixtures: synthetic image datasets, a tiny random-weight backbone, the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TINY = "test_efficientnet"  # timm's tiny test network: random weights, fast on CPU

COLORS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (set GRAFT_SHARED to the shared/ folder)")
    return path


def make_image(path: Path, color: tuple[int, int, int], seed: int, size=(72, 60)) -> Path:
    """A noisy image of one dominant colour (learnable from any features)."""
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.float32)
    pixels = base + rng.normal(0, 25, size=(size[1], size[0], 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_dataset(root: Path, n_per_class: int = 10, classes=("red", "green", "blue"),
                 ext: str = ".jpg", start: int = 0) -> Path:
    for c_index, name in enumerate(classes):
        for i in range(start, start + n_per_class):
            make_image(root / name / f"{name}_{i:03d}{ext}", COLORS[name], seed=c_index * 1000 + i)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session uses its own cache (never the user's)."""
    cache = tmp_path_factory.getbasetemp() / "graft-cache"
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def colors_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "colors")


@pytest.fixture(scope="session")
def tiny_backbone():
    from graft.backbones import create_backbone

    return create_backbone(TINY, weights="random")
