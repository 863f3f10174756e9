"""Extraction engines, the crash-safe cache, and feature files."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset, make_image

from graft.backbones import ImageModel
from graft.data import assign_splits, scan_dataset
from graft.errors import DataError
from graft.features import (
    create_engine,
    extract_dataset,
    extract_feature_set,
    extract_to_file,
    load_feature_file,
    open_cache,
)


def test_onnx_engine_matches_torch(tiny_backbone, tmp_path):
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    assert engine.name == "onnxruntime" and engine.micro_batch == 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, *tiny_backbone.preprocess.size, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = ImageModel(tiny_backbone)(torch.from_numpy(images)).numpy()
    got = engine(images)  # one session, its batch axis pinned to 1: five runs
    assert got.shape == (5, tiny_backbone.num_features)
    assert np.abs(got - expected).max() < 1e-4
    assert engine(images[:0]).shape == (0, tiny_backbone.num_features)
    torch_engine = create_engine(tiny_backbone, device="torch")
    assert np.abs(torch_engine(images) - expected).max() < 1e-5


def test_cache_extracts_each_image_once(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=6)
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "c")
    cache = open_cache(engine, tmp_path / "c")
    dataset = scan_dataset(root)
    _, first = extract_dataset(dataset, [engine], [cache], batch_size=4, progress=False)
    assert (first.n_computed, first.n_cached) == (18, 0)
    _, again = extract_dataset(scan_dataset(root), [engine], [open_cache(engine, tmp_path / "c")],
                               progress=False)
    assert (again.n_computed, again.n_cached) == (0, 18)
    make_dataset(root, n_per_class=2, start=50, classes=("red",))
    _, added = extract_dataset(scan_dataset(root), [engine], [open_cache(engine, tmp_path / "c")],
                               progress=False)
    assert (added.n_computed, added.n_cached) == (2, 18)


def test_bad_files_are_reported_not_dropped(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=4)
    (root / "red" / "zero.jpg").write_bytes(b"")
    (root / "blue" / "fake.png").write_text("nope")
    engine = create_engine(tiny_backbone, device="cpu")
    features, report = extract_feature_set(assign_splits(scan_dataset(root)), engine,
                                           [tiny_backbone.config()], progress=False)
    assert [path for path, _ in report.failures] == ["blue/fake.png", "red/zero.jpg"]
    assert "empty file" in dict(report.failures)["red/zero.jpg"]
    assert len(features.paths) == 12 and features.skipped == report.failures
    # the failure is cached too, and still reported on the next run
    _, again = extract_feature_set(assign_splits(scan_dataset(root)), engine,
                                   [tiny_backbone.config()], progress=False)
    assert again.n_computed == 0 and len(again.failures) == 2


def test_class_with_one_usable_image_is_an_error(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=3, classes=("red", "blue"))
    make_image(root / "green" / "only.jpg", (0, 200, 0), 1)
    (root / "green" / "broken.jpg").write_bytes(b"")
    engine = create_engine(tiny_backbone, device="cpu")
    with pytest.raises(DataError, match=r"'green' \(1 usable\)"):
        extract_feature_set(assign_splits(scan_dataset(root)), engine, [tiny_backbone.config()],
                            progress=False)


def test_feature_file_roundtrip(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=5)
    dataset = assign_splits(scan_dataset(root))
    engine = create_engine(tiny_backbone, device="cpu")
    in_memory, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()], progress=False)
    path, _ = extract_to_file(dataset, engine, [tiny_backbone.config()], tmp_path / "f.h5",
                              progress=False)
    loaded = load_feature_file(path)
    np.testing.assert_array_equal(loaded.features, in_memory.features)
    np.testing.assert_array_equal(loaded.labels, in_memory.labels)
    assert loaded.label_names == ["blue", "green", "red"]
    assert loaded.paths == in_memory.paths and list(loaded.split) == list(in_memory.split)
    assert loaded.backbones[0]["name"] == TINY and loaded.key == engine.key
    assert loaded.backbones[0]["preprocess"]["input_size"] == [3, 160, 160]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "other.h5").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable HDF5"):
        load_feature_file(tmp_path / "other.h5")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from graft.backbones import create_backbone
    from graft.data import scan_dataset
    from graft.features import create_engine, extract_dataset, open_cache

    backbone = create_backbone("test_efficientnet", weights="random")
    engine = create_engine(backbone, device="cpu")
    calls = {"n": 0}
    run = engine.__call__

    class Killer:
        key, preprocess, num_features = engine.key, engine.preprocess, engine.num_features
        prefetch = engine.prefetch
        def __call__(self, images):
            calls["n"] += 1
            if calls["n"] == int(sys.argv[2]):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a power cut
            return run(images)

    cache = open_cache(engine, shard_size=4)
    extract_dataset(scan_dataset(sys.argv[1]), [Killer()], [cache], batch_size=4,
                    progress=False)
    """
)


def test_killed_extraction_resumes_without_corruption(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=8)
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    result = subprocess.run([sys.executable, str(script), str(root), "4"], env=os.environ.copy())
    assert result.returncode == -9  # it really was killed mid-extraction
    engine = create_engine(tiny_backbone, device="cpu")
    cache = open_cache(engine)
    _, report = extract_dataset(scan_dataset(root), [engine], [cache], progress=False)
    assert report.n_cached == 12 and report.n_computed == 12  # 3 complete shards of 4 survived
    fresh_engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "fresh")
    fresh, _ = extract_feature_set(assign_splits(scan_dataset(root)), fresh_engine,
                                   [tiny_backbone.config()], cache_dir=tmp_path / "fresh",
                                   progress=False)
    resumed, _ = extract_feature_set(assign_splits(scan_dataset(root)), engine,
                                     [tiny_backbone.config()], progress=False)
    np.testing.assert_allclose(resumed.features, fresh.features, atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("n_images", [1, 7, 8, 25])
def test_decoded_batches_keep_every_item_in_order(tiny_backbone, tmp_path, n_images, workers):
    from graft.inference import iter_decoded_batches

    paths = [make_image(tmp_path / f"{i:03d}.png", (i, 0, 0), i) for i in range(n_images)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    items = paths[:3] + [bad] + paths[3:]
    batches = list(iter_decoded_batches(items, [tiny_backbone.preprocess], batch_size=4,
                                        workers=workers))
    decoded = [item for b in batches for item in b.items]
    assert decoded == paths
    assert [item for b in batches for item, _ in b.failures] == [bad]
    assert all(len(b.items) == len(b.images[0]) <= 4 for b in batches)
    assert all(len(b.items) == 4 for b in batches[:-1])
