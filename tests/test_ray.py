"""`--engine ray` on a real local Ray cluster (ray.init(num_cpus=2)): the same features as a
local run, cached by content, nothing recomputed, and a killed run resumes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

ray = pytest.importorskip("ray")

from graft.data import assign_splits, scan_dataset
from graft.features import create_engine, extract_dataset, extract_feature_set, open_cache

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_extraction_equals_local_and_is_cached(cluster, tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=14)
    (data / "red" / "broken.jpg").write_bytes(b"not an image")
    dataset = assign_splits(scan_dataset(data))
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "c1")
    local, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                   cache_dir=tmp_path / "local", progress=False)
    remote, report = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                         cache_dir=tmp_path / "ray", progress=False,
                                         engine="ray")
    assert report.n_computed == 42 and [p for p, _ in report.failures] == ["red/broken.jpg"]
    assert remote.paths == local.paths
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)
    again, report = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                        cache_dir=tmp_path / "ray", progress=False, engine="ray")
    assert report.n_computed == 0 and report.n_cached == 42  # the failure is remembered too
    np.testing.assert_array_equal(again.features, remote.features)


KILLED = textwrap.dedent("""
    import os, signal, sys
    import graft.features.extract as extract
    from graft.backbones import create_backbone
    from graft.data import scan_dataset
    from graft.features import create_engine, extract_dataset, open_cache
    from graft.scale import ray_engine

    seen = {"n": 0}
    real = ray_engine.ray_features

    def dying(*args, **kwargs):
        for batch in real(*args, **kwargs):
            yield batch
            seen["n"] += 1
            if seen["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a lost node

    ray_engine.ray_features = dying
    backbone = create_backbone("test_efficientnet", weights="random")
    engine = create_engine(backbone, device="cpu", cache_dir=sys.argv[2])
    cache = open_cache(engine, sys.argv[2], shard_size=4)
    extract_dataset(scan_dataset(sys.argv[1]), [engine], [cache], batch_size=4,
                    progress=False, engine="ray")
""")


def test_a_killed_ray_run_resumes(tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=10)
    result = subprocess.run([sys.executable, "-c", KILLED, str(data), str(tmp_path / "cache")],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -9, result.stderr[-2000:]
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    cache = open_cache(engine, tmp_path / "cache", shard_size=4)
    done = len(cache)
    assert 8 <= done < 30  # the shards written before the kill are there, complete
    _, report = extract_dataset(scan_dataset(data), [engine], [cache], batch_size=4,
                                progress=False)
    assert report.n_cached == done and report.n_computed == 30 - done


def test_the_cli_extracts_and_trains_on_ray(cluster, tmp_path):
    from graft.cli import main

    data = make_dataset(tmp_path / "data", n_per_class=6)
    args = ["--backbone", "test_efficientnet", "--weights", "random", "--engine", "ray",
            "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert main(["extract", str(data), "--out", str(tmp_path / "f.h5"), *args]) == 0
    assert main(["train", str(data), "--out", str(tmp_path / "model"), *args]) == 0
    assert (tmp_path / "model" / "graft.json").is_file()
