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


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Fixtures wider than a test (a model trained once per module) use the session's cache
    too, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRAFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "graft-cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


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


# Dummy credentials for the local S3 server (moto accepts any); the endpoint is a loopback port.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "graft-test", "AWS_SECRET_ACCESS_KEY": "graft-test",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


class LocalS3:
    """A real S3 API (moto's server mode) on a loopback port, and a bucket to put data in."""

    bucket = "graft-test"

    def __init__(self, endpoint: str) -> None:
        from pyarrow import fs as pafs

        self.endpoint = endpoint
        self.fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True,
                                    access_key="graft-test", secret_key="graft-test",
                                    region="us-east-1")
        self.fs.create_dir(self.bucket)

    def upload(self, folder: Path, prefix: str) -> str:
        """Copy a local folder to s3://graft-test/<prefix>; its URI."""
        from pyarrow import fs as pafs

        pafs.copy_files(str(folder), f"{self.bucket}/{prefix}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        return f"s3://{self.bucket}/{prefix}"

    def put(self, key: str, data: bytes, scratch: Path) -> str:
        """One object (through a file: moto refuses pyarrow's multipart stream uploads)."""
        file = scratch / Path(key).name
        file.write_bytes(data)
        from pyarrow import fs as pafs

        pafs.copy_files(str(file), f"{self.bucket}/{key}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="module")
def s3():
    """``s3://graft-test`` on a local S3-compatible server; ``AWS_ENDPOINT_URL`` points at it (as a
    user with MinIO would set it), with dummy credentials."""
    pytest.importorskip("pyarrow")
    server_mod = pytest.importorskip("moto.server")
    from graft.data import storage

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
                patch.setenv(name, value)
            storage._FILESYSTEMS.clear()  # made afresh, from these settings
            yield LocalS3(endpoint)
    finally:
        storage._FILESYSTEMS.clear()
        server.stop()
