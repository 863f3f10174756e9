"""Extraction engines, the crash-safe cache, and feature files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_dataset, make_image

import graft
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


def test_streamed_feature_file_equals_the_held_listing(tiny_backbone, tmp_path, monkeypatch):
    """graft extract's path: the listing streamed and extracted a part at a time (parts of 4
    images here), rows written from the cache split by split; the same file as the listing held
    whole, unreadable images reported once, a re-run computing nothing."""
    import graft.features.extract as extract_module
    from graft.data.dataset import stream_dataset

    root = make_dataset(tmp_path / "data", n_per_class=5)
    make_image(root / "red" / "deeper" / "nested.png", (200, 0, 0), 9)
    (root / "blue" / "zero.jpg").write_bytes(b"")
    (root / "red" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")  # cannot be stat'ed
    engine = create_engine(tiny_backbone, device="cpu")
    held, _ = extract_feature_set(assign_splits(scan_dataset(root, progress=False)), engine,
                                  [tiny_backbone.config()], progress=False)
    monkeypatch.setattr(extract_module, "_STREAM_ROWS", 4)
    monkeypatch.setattr(extract_module, "_GATHER_ROWS", 3)
    for run in range(2):
        path, report = extract_to_file(stream_dataset(root), engine, [tiny_backbone.config()],
                                       tmp_path / "f.h5", progress=False)
        loaded = load_feature_file(path)
        np.testing.assert_array_equal(loaded.features, held.features)
        np.testing.assert_array_equal(loaded.labels, held.labels)
        assert loaded.paths == held.paths and list(loaded.split) == list(held.split)
        assert list(loaded.split) == sorted(loaded.split, key=["train", "val", "test"].index)
        # each unreadable file reported once, with its own reason
        assert [p for p, _ in report.failures] == ["blue/zero.jpg", "red/dangling.jpg"]
        assert "cannot stat" in report.failures[1][1]
        assert loaded.skipped == report.failures and report.n_images == 18
        assert (report.n_cached, report.n_computed) == (16, 0)  # the held run cached them
    # a dataset never split: its rows are written too (after any split ones), as before
    path, _ = extract_to_file(scan_dataset(root, progress=False), engine,
                              [tiny_backbone.config()], tmp_path / "unsplit.h5", progress=False)
    unsplit = load_feature_file(path)
    assert sorted(unsplit.paths) == sorted(held.paths) and set(unsplit.split) == {""}
    for file in (root / "green").iterdir():
        if file.name != "green_000.jpg":
            file.unlink()
    with pytest.raises(DataError, match=r"'green' \(1 usable\)"):
        extract_to_file(stream_dataset(root), engine, [tiny_backbone.config()],
                        tmp_path / "g.h5", progress=False)
    assert not (tmp_path / "g.h5").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _changed_while_read(stream, removed: str, rewritten: str, listings: list):
    """``stream``, where ``removed`` is deleted and ``rewritten`` gets a new modification time
    once its listing has begun (each listing appended to ``listings``)."""
    import dataclasses

    def source():
        listings.append(1)
        for position, sample in enumerate(stream._source()):
            if position == 0:
                (stream.root / removed).unlink()
                os.utime(stream.root / rewritten, ns=(1, 1))
            yield sample

    return dataclasses.replace(stream, _source=source)


def _check_changed_files(tiny_backbone, held, changed, report, removed, rewritten, listings,
                         rows=lambda features: features):
    """The folder was listed once; the removed file is reported, the rewritten one extracted
    again (its key changed with its mtime), and every other row is where it belongs."""
    assert len(listings) == 1
    assert [p for p, _ in report.failures] == [removed]
    assert "cannot stat" in report.failures[0][1] and report.n_computed == 1
    keep = [i for i, p in enumerate(held.paths) if p != removed]
    assert changed.paths == [held.paths[i] for i in keep]
    np.testing.assert_array_equal(rows(changed.features), held.features[keep])
    np.testing.assert_array_equal(changed.labels, held.labels[keep])
    assert list(changed.split) == [held.split[i] for i in keep]
    assert rewritten in changed.paths


def test_files_changed_while_extracting_are_reported_and_leave_no_gap(tiny_backbone, tmp_path):
    """A file removed, and one rewritten, after graft listed them but before it read them: the
    removed one reported, the rewritten one read again, no empty rows, one listing."""

    from graft.data.dataset import stream_dataset

    root = make_dataset(tmp_path / "data", n_per_class=8)
    engine = create_engine(tiny_backbone, device="cpu")
    held, _ = extract_feature_set(assign_splits(scan_dataset(root, progress=False)), engine,
                                  [tiny_backbone.config()], progress=False)
    stream = stream_dataset(root)
    splits = {s.relpath: s.split for s in stream}
    removed = next(p for p in sorted(splits)[1:] if splits[p] == "train")
    rewritten = next(p for p in sorted(splits)[1:] if splits[p] == "test")
    listings = []
    path, report = extract_to_file(_changed_while_read(stream, removed, rewritten, listings),
                                   engine, [tiny_backbone.config()], tmp_path / "f.h5",
                                   progress=False)
    _check_changed_files(tiny_backbone, held, load_feature_file(path), report, removed,
                         rewritten, listings)


@pytest.mark.parametrize("out_of_core", [False, True])
def test_streamed_feature_set_equals_the_held_listing(tiny_backbone, tmp_path, monkeypatch,
                                                      out_of_core):
    """graft train's path: a stream extracted a part at a time and its rows gathered split by
    split into memory (or, out of core, their keys): the same FeatureSet as the listing held
    whole, listed once; a file removed while it is read is left out, the rows after it moved
    up; a class left with one usable image is refused."""

    import graft.features.extract as extract_module
    from graft.data.dataset import stream_dataset
    from graft.features import CachedFeatures

    root = make_dataset(tmp_path / "data", n_per_class=7)
    (root / "blue" / "zero.jpg").write_bytes(b"")
    engine = create_engine(tiny_backbone, device="cpu")
    held, _ = extract_feature_set(assign_splits(scan_dataset(root, progress=False)), engine,
                                  [tiny_backbone.config()], progress=False)
    monkeypatch.setattr(extract_module, "_STREAM_ROWS", 4)
    monkeypatch.setattr(extract_module, "_GATHER_ROWS", 3)

    def rows(features):
        return features.rows() if out_of_core else features

    streamed, report = extract_feature_set(stream_dataset(root), engine,
                                           [tiny_backbone.config()], progress=False,
                                           out_of_core=out_of_core)
    assert isinstance(streamed.features, CachedFeatures) == out_of_core
    np.testing.assert_array_equal(rows(streamed.features), held.features)
    np.testing.assert_array_equal(streamed.labels, held.labels)
    assert streamed.paths == held.paths and list(streamed.split) == list(held.split)
    assert (streamed.key, streamed.root, streamed.split_params) == (held.key, held.root,
                                                                     held.split_params)
    assert streamed.skipped == held.skipped == report.failures
    assert [p for p, _ in report.failures] == ["blue/zero.jpg"]
    assert (report.n_images, report.n_cached, report.n_computed) == (22, 21, 0)

    stream = stream_dataset(root)
    splits = {s.relpath: s.split for s in stream}
    removed = next(p for p in held.paths[1:] if splits[p] == "train")
    rewritten = next(p for p in held.paths[1:] if splits[p] == "test")
    listings = []
    (root / "blue" / "zero.jpg").unlink()  # (failures are checked above)
    held, _ = extract_feature_set(assign_splits(scan_dataset(root, progress=False)), engine,
                                  [tiny_backbone.config()], progress=False)
    changed, report = extract_feature_set(
        _changed_while_read(stream_dataset(root), removed, rewritten, listings), engine,
        [tiny_backbone.config()], progress=False, out_of_core=out_of_core)
    _check_changed_files(tiny_backbone, held, changed, report, removed, rewritten, listings,
                         rows)
    for file in (root / "green").iterdir():
        if file.name != "green_000.jpg":
            file.unlink()
    with pytest.raises(DataError, match=r"'green' \(1 usable\)"):
        extract_feature_set(stream_dataset(root), engine, [tiny_backbone.config()],
                            progress=False, out_of_core=out_of_core)


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


def test_decoding_in_processes_gives_what_threads_give(tiny_backbone, tmp_path):
    """The GPU path's decode processes (spawned, tasks of 8 images, 2 batches ahead): the same
    arrays, order and failures as threads, across batch and task boundaries."""
    from graft.inference import iter_decoded_batches
    from graft.inference.batches import use_processes

    paths = [make_image(tmp_path / f"{i:03d}.jpg", (i * 9, 40, 90), i) for i in range(21)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    items = [*paths[:9], bad, *paths[9:]]
    runs = [list(iter_decoded_batches(items, [tiny_backbone.preprocess], batch_size=5,
                                      workers=3, prefetch=2, processes=processes))
            for processes in (False, True)]
    threads, processes = runs
    assert [b.items for b in processes] == [b.items for b in threads]
    assert [b.failures for b in processes] == [b.failures for b in threads]
    assert [b.failures for b in processes if b.failures][0][0][0] == bad
    for a, b in zip(threads, processes):
        np.testing.assert_array_equal(a.images[0], b.images[0])
    assert use_processes(3, 2, paths[0]) and not use_processes(3, 0, paths[0])
    assert not use_processes(2, 2, paths[0]) and not use_processes(16, 2, "s3://bucket/a.jpg")


def test_a_decode_process_that_dies_is_one_error(tiny_backbone, tmp_path):
    """Killed (as the kernel's OOM killer would), a decode process stops the run with a
    DataError that says so, not a hang or a BrokenProcessPool traceback, and leaves no process
    behind. (With the arrays sent through the pool's pipe, this hung in 2 of 6 tries.)"""
    import multiprocessing

    import graft
    from graft.inference import iter_decoded_batches

    paths = [make_image(tmp_path / f"{i:03d}.jpg", (i * 5, 60, 90), i) for i in range(60)]
    batches = iter_decoded_batches(paths, [tiny_backbone.preprocess], batch_size=4, workers=3,
                                   prefetch=2, processes=True)
    assert len(next(batches).items) == 4
    children = multiprocessing.active_children()
    assert len(children) == 3
    for child in children:
        child.kill()
    with pytest.raises(graft.DataError, match="process decoding images stopped"):
        for _ in batches:
            pass
    assert not multiprocessing.active_children()


def test_cache_index_opens_without_reading_shards(tmp_path):
    from graft.features.store import FeatureCache

    rng = np.random.default_rng(0)
    cache = FeatureCache(tmp_path / "c", num_features=4, shard_size=3)
    keys = [f"k{i}" for i in range(10)]
    rows = rng.normal(size=(10, 4)).astype(np.float32)
    cache.add(keys, rows)
    cache.add_failure("bad", "not an image")
    cache.flush()
    cache.close()
    shards = sorted((tmp_path / "c").glob("shard-*.h5"))
    assert len(shards) == 2  # the 10 rows (added at once), then the failure

    reopened = FeatureCache(tmp_path / "c", num_features=4)
    present, failed = reopened.lookup([*keys, "bad", "new"])
    assert present == set(keys) and failed == {"bad": "not an image"} and len(reopened) == 10
    np.testing.assert_array_equal(reopened.get(["k3", "k0", "k3"]), rows[[3, 0, 3]])
    assert reopened.info()["images"] == 10 and reopened.info()["failures"] == 1
    reopened.close()

    (tmp_path / "c" / "index.sqlite").unlink()  # a cache from before the index: rebuilt on open
    rebuilt = FeatureCache(tmp_path / "c", num_features=4)
    assert rebuilt.lookup(keys)[0] == set(keys) and rebuilt.failure("bad") == "not an image"
    rebuilt.close()
    for shard in shards:  # shards deleted by hand: their rows are forgotten, not served
        shard.unlink()
    emptied = FeatureCache(tmp_path / "c", num_features=4)
    assert len(emptied) == 0 and "k0" not in emptied
    with pytest.raises(KeyError):
        emptied.get(["k0"])


def test_cache_info_and_prune(tiny_backbone, tmp_path, capsys):
    from graft.cli import main

    data = make_dataset(tmp_path / "colors", n_per_class=3)
    cache = tmp_path / "cache"
    assert main(["extract", str(data), "--out", str(tmp_path / "f.h5"), "--backbone", TINY,
                 "--weights", "random", "--cache-dir", str(cache), "-q"]) == 0
    capsys.readouterr()
    assert main(["cache", "info", "--cache-dir", str(cache), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["images"] == 9 and entry["backbone"] == TINY and entry["graph_bytes"] > 0
    assert main(["cache", "prune", "--cache-dir", str(cache)]) == 2  # says what to prune
    assert "--older-than" in capsys.readouterr().err
    assert main(["cache", "prune", "--cache-dir", str(cache), "--older-than", "1"]) == 0
    assert "Deleted 0 cache(s)" in capsys.readouterr().out  # used just now
    assert main(["cache", "prune", "--cache-dir", str(cache), "--key", entry["key"],
                 "--dry-run"]) == 0
    assert Path(entry["path"]).is_dir()
    assert (cache / "contents.sqlite").is_file()  # the images' content hashes
    assert main(["cache", "prune", "--cache-dir", str(cache), "--all"]) == 0
    assert not Path(entry["path"]).exists() and not any(Path(g).exists() for g in entry["graphs"])
    assert not (cache / "contents.sqlite").exists()
    assert main(["extract", str(data), "--out", str(tmp_path / "g.h5"), "--backbone", TINY,
                 "--weights", "random", "--cache-dir", str(cache), "-q"]) == 0  # rebuilt


def test_splits_are_views_of_one_matrix(tiny_backbone, tmp_path):
    root = make_dataset(tmp_path / "data", n_per_class=6)
    dataset = assign_splits(scan_dataset(root), test_size=0.3, val_size=0.2)
    engine = create_engine(tiny_backbone, device="cpu")
    features, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()], progress=False)
    for split in ("train", "val", "test"):
        X, y = features.subset(split)
        assert len(X) and np.shares_memory(X, features.features), split  # no copy
        assert list(features.split[features.split == split]) == [split] * len(y)


def test_out_of_core_training_reads_the_cache_a_chunk_at_a_time(tiny_backbone, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from graft.features import CachedFeatures
    from graft.heads import create_head, fit_head, refit_in_chunks

    root = make_dataset(tmp_path / "data", n_per_class=12)
    dataset = assign_splits(scan_dataset(root), test_size=0.25)
    engine = create_engine(tiny_backbone, device="cpu")
    in_memory, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()], progress=False)
    cached, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()], progress=False,
                                    out_of_core=True)
    assert isinstance(cached.features, CachedFeatures)
    assert cached.features.shape == in_memory.features.shape
    np.testing.assert_array_equal(cached.features.rows(), in_memory.features)
    reads = []

    class Counted(CachedFeatures):  # the same reads, their sizes recorded
        def rows(self, start=0, stop=None):
            block = super().rows(start, stop)
            reads.append(len(block))
            return block

    X, y = cached.subset("train")
    X_memory, _ = in_memory.subset("train")
    for classes in ([0, 1], [0, 1, 2]):  # binary and multinomial
        rows = np.isin(y, classes)
        keys = [k for k, keep in zip(X.keys, rows) if keep]
        # The reference in float64: scikit-learn fits float32 input in float32, about 1e-4 off
        # the optimum, while the out-of-core fit reaches it within its gradient tolerance.
        expected = LogisticRegression(C=0.5, tol=1e-9, max_iter=5000).fit(
            X_memory[rows].astype(np.float64), y[rows])
        start = LogisticRegression(C=0.5, tol=1e-9, max_iter=5000).fit(X_memory[rows][::3],
                                                                     y[rows][::3])
        reads.clear()
        model = refit_in_chunks(start, Counted(X.caches, keys), y[rows], chunk_rows=5)
        assert max(reads) == 5 and len(reads) > 2  # never more than a chunk at once
        np.testing.assert_allclose(model.predict_proba(X_memory[rows]),
                                   expected.predict_proba(X_memory[rows]), atol=1e-6)
    search, _ = fit_head(create_head("logreg"), X, y, max_search_rows=12)
    assert search.search_rows_ <= 12 and search.predict(X.rows()).shape == y.shape
    with pytest.raises(graft.ConfigError, match="must be one of logreg"):
        fit_head(create_head("naive-bayes"), X, y)


def test_train_out_of_core_end_to_end(tmp_path, monkeypatch, capsys):
    import graft.workflows.train as training
    from graft.cli import main

    data = make_dataset(tmp_path / "data", n_per_class=10)
    args = ["--backbone", TINY, "--weights", "random", "-q"]
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--out-of-core", *args]) == 0
    config = json.loads((tmp_path / "m" / "graft.json").read_text())
    assert config["head"]["name"] == "logreg" and config["head"]["out_of_core"]["chunk_rows"]
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.8 and metrics["scored_with"].startswith("saved model")
    capsys.readouterr()
    # not asked for, but the matrix would not fit: out of core, and said so
    monkeypatch.setattr(training, "available_memory", lambda: 1000)
    assert main(["train", str(data), "--out", str(tmp_path / "m2"), *args]) == 0
    assert "training out of core" in capsys.readouterr().err
    assert "out_of_core" in json.loads((tmp_path / "m2" / "graft.json").read_text())["head"]
    assert main(["train", str(data), "--out", str(tmp_path / "m5"), "--augment-views", "1",
                 *args]) == 0  # views need memory: kept there, and said so
    assert "trains in memory only" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "m3"), "--in-memory", *args]) == 0
    assert "out_of_core" not in json.loads((tmp_path / "m3" / "graft.json").read_text())["head"]
    assert main(["train", str(data), "--out", str(tmp_path / "m4"), "--out-of-core",
                 "--head", "svm", *args]) == 2
    assert "out of core, use --head logreg" in capsys.readouterr().err


def test_content_hashes_come_from_extraction_and_a_warm_run_reads_no_image(
        tiny_backbone, tmp_path, monkeypatch):
    """Extraction hashes the bytes it decodes and keeps the hash beside the cache, so the
    feature set (and file) carries each row's content hash, and a warm run opens no image."""
    import graft.data.contents as contents
    import graft.data.storage as storage
    from graft.data.dataset import stream_dataset

    root = make_dataset(tmp_path / "data", n_per_class=4)
    engine = create_engine(tiny_backbone, device="cpu")
    first, _ = extract_feature_set(stream_dataset(root), engine, [tiny_backbone.config()],
                                   progress=False)
    expected = contents.content_hashes(str(root / p) for p in first.paths)
    assert (expected != 0).all()
    np.testing.assert_array_equal(first.content_hashes, expected)

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read on a warm run")

    monkeypatch.setattr(contents, "content_hash", no_reading)
    monkeypatch.setattr(storage, "read_bytes", no_reading)
    again, report = extract_feature_set(stream_dataset(root), engine, [tiny_backbone.config()],
                                        progress=False)
    assert report.n_computed == 0
    np.testing.assert_array_equal(again.content_hashes, expected)
    path, _ = extract_to_file(stream_dataset(root), engine, [tiny_backbone.config()],
                              tmp_path / "f.h5", progress=False)
    np.testing.assert_array_equal(load_feature_file(path).content_hashes, expected)


def test_a_file_gone_between_lookup_and_read_is_reported(tiny_backbone, tmp_path, monkeypatch):
    """Looked up (its key computed) and then removed before it is read: one skipped image with
    its reason, the others extracted."""
    import graft.features.extract as extract_module
    from graft.data.dataset import stream_dataset

    root = make_dataset(tmp_path / "data", n_per_class=4)
    gone = root / "red" / "red_001.jpg"
    look_up = extract_module._look_up

    def then_remove(*args, **kwargs):
        found = look_up(*args, **kwargs)
        gone.unlink()
        return found

    monkeypatch.setattr(extract_module, "_look_up", then_remove)
    engine = create_engine(tiny_backbone, device="cpu")
    features, report = extract_feature_set(stream_dataset(root), engine,
                                           [tiny_backbone.config()], progress=False)
    assert [p for p, _ in report.failures] == ["red/red_001.jpg"]
    assert "cannot read" in report.failures[0][1] and len(features.paths) == 11
    assert (features.content_hashes != 0).all()


def test_the_cost_of_a_long_extraction_is_said_before_it_goes_on(tiny_backbone, tmp_path,
                                                                   monkeypatch, caplog):
    import graft.features.extract as extract_module
    from graft.data.dataset import stream_dataset

    monkeypatch.setattr(extract_module, "_LONG", 0.0)  # every extraction counts as long here
    monkeypatch.setattr(extract_module, "_STREAM_ROWS", 8)  # three parts, said once
    root = make_dataset(tmp_path / "data", n_per_class=6)
    engine = create_engine(tiny_backbone, device="cpu")
    with caplog.at_level("WARNING", logger="graft"):
        extract_feature_set(stream_dataset(root), engine, [tiny_backbone.config()],
                            progress=False, batch_size=4)
    (said,) = [r.getMessage() for r in caplog.records if "ms per image" in r.getMessage()]
    assert "(160x160 px): up to 10 images" in said and "smaller image_size" in said
