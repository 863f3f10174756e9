"""Images on ``s3://`` (a real S3 API: moto's server mode on a loopback port): listed in one
request, read where they are decoded, giving the same datasets, features, models and predictions
as the same files on local disk. (Ray reading S3: ``test_ray.py``.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import make_dataset, make_image

from graft.data import assign_splits, iter_image_files, scan_dataset
from graft.errors import DataError
from graft.features import create_engine, extract_feature_set
from graft.features.store import cache_key

pytest.importorskip("pyarrow")


def _rows(dataset):
    return [(s.relpath, s.label, s.split) for s in dataset.samples]


def test_a_listing_on_s3_finds_what_a_local_scan_finds(s3, tmp_path):
    data = make_dataset(tmp_path / "plain", n_per_class=3)
    (data / "red" / ".hidden.jpg").write_bytes(b"skipped")
    (data / "red" / "notes.txt").write_text("not an image")
    make_image(data / "green" / "deeper" / "nested.png", (40, 180, 60), seed=7)
    (data / "model").mkdir()
    (data / "model" / "graft.json").write_text("{}")  # a model directory is never a class
    make_image(data / "model" / "example.jpg", (0, 0, 0), seed=8)
    uri = s3.upload(data, "plain")
    local, remote = scan_dataset(data), scan_dataset(uri + "/")
    assert _rows(remote) == _rows(local) and len(remote) == 10
    assert remote.classes == ["blue", "green", "red"] and remote.layout == "folders"
    assert remote.root == uri
    sample = remote.samples[0]
    assert sample.path == f"{uri}/{sample.relpath}"
    assert sample.stamp[0] == os.path.getsize(data / sample.relpath)
    # the listing's size and time are what a request for the one object says: the same cache key
    assert cache_key(sample.path, sample.stamp) == cache_key(sample.path)
    assert list(iter_image_files(uri + "/green")) == [
        f"{uri}/green/deeper/nested.png", *(f"{uri}/green/green_{i:03d}.jpg" for i in range(3))]

    presplit = tmp_path / "presplit"
    make_dataset(presplit / "train", n_per_class=3)
    make_dataset(presplit / "validation", n_per_class=2)
    uri = s3.upload(presplit, "presplit")
    local, remote = assign_splits(scan_dataset(presplit)), assign_splits(scan_dataset(uri))
    assert _rows(remote) == _rows(local) and remote.layout == "presplit"
    assert {s.split for s in remote.samples} == {"train", "test"}


def test_missing_or_unusable_remote_data_is_a_clear_error(s3, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset("s3://graft-test/nothing-here")
    s3.put("flat/one.jpg", b"x", tmp_path)
    with pytest.raises(DataError, match="put each class in its own sub-folder"):
        scan_dataset("s3://graft-test/flat")
    with pytest.raises(DataError, match="local disk only"):
        scan_dataset("s3://graft-test/labels.csv")


def test_any_key_is_read_and_what_graft_cannot_read_says_so(s3, tmp_path):
    from graft.data import storage

    photo = make_image(tmp_path / "photo.jpg", (200, 40, 40), seed=3).read_bytes()
    uri = s3.put("odd/red/my photo #1?.jpg", photo, tmp_path)
    s3.put("odd/blue/b.jpg", photo, tmp_path)
    storage._FILESYSTEMS.clear()  # the odd key is the first this process sees of the bucket
    assert list(iter_image_files(uri)) == [uri]
    listed = next(s for s in scan_dataset("s3://graft-test/odd").samples if s.label == "red")
    assert listed.path == uri and cache_key(uri) == cache_key(listed.path, listed.stamp)
    assert storage.read_bytes(uri) == photo
    with pytest.raises(OSError, match="too large for an image file"):
        storage.read_bytes(uri, limit=1000)
    with pytest.raises(DataError, match="graft reads s3://, gs:// and hdfs://"):
        scan_dataset("abfs://container@account.dfs.core.windows.net/data")
    with pytest.raises(DataError, match="not in the URI"):
        scan_dataset("s3://KEY:SECRET@graft-test/odd")


def test_features_from_s3_equal_local_ones_and_are_cached(s3, tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=5)
    (data / "red" / "broken.jpg").write_bytes(b"not an image")
    uri = s3.upload(data, "extract")
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "onnx")
    config = [tiny_backbone.config()]
    local, _ = extract_feature_set(assign_splits(scan_dataset(data)), engine, config,
                                   cache_dir=tmp_path / "local", progress=False)
    remote, report = extract_feature_set(assign_splits(scan_dataset(uri)), engine, config,
                                         cache_dir=tmp_path / "remote", progress=False)
    assert report.n_computed == 15 and [p for p, _ in report.failures] == ["red/broken.jpg"]
    assert remote.paths == local.paths and remote.root == uri
    np.testing.assert_allclose(remote.features, local.features, atol=1e-6)
    _, report = extract_feature_set(assign_splits(scan_dataset(uri)), engine, config,
                                    cache_dir=tmp_path / "remote", progress=False)
    assert report.n_computed == 0 and report.n_cached == 15  # the failure is remembered too


def test_train_predict_and_evaluate_read_s3(s3, tmp_path, capsys):
    from graft.cli import main
    from graft.workflows.evaluate import evaluate
    from graft.workflows.predict import predict

    data = make_dataset(tmp_path / "data", n_per_class=8)
    uri = s3.upload(data, "cli")
    model = tmp_path / "model"
    options = ["--backbone", "test_efficientnet", "--weights", "random", "--cache-dir",
               str(tmp_path / "cache"), "-q"]
    assert main(["train", uri, "--out", str(model), *options]) == 0
    config = json.loads((model / "graft.json").read_text())
    assert config["training"]["data"] == uri and config["training"]["source"] == uri

    local = [p.to_dict() for p in predict(model, [data / "red", data / "blue"], top_k=2)]
    remote = [p.to_dict() for p in predict(model, [f"{uri}/red", f"{uri}/blue"], top_k=2)]
    assert [r["path"] for r in remote] == [f"{uri}/{os.path.relpath(r['path'], data)}"
                                           for r in local] and len(remote) == 16
    for mine, theirs in zip(remote, local):
        assert [p["label"] for p in mine["predictions"]] == \
            [p["label"] for p in theirs["predictions"]]
        np.testing.assert_allclose([p["score"] for p in mine["predictions"]],
                                   [p["score"] for p in theirs["predictions"]], atol=1e-5)

    result = evaluate(model, uri, cache_dir=tmp_path / "cache", progress=False)
    assert result.split == "test"  # recognised as the training data: its held-out split
    assert result.metrics["overlap_with_training"] == 0  # file contents compared, from S3
    capsys.readouterr()
    assert main(["predict", str(model), f"{uri}/green/green_000.jpg", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == f"{uri}/green/green_000.jpg"
    assert main(["train", "s3://graft-test/missing", "--out", str(tmp_path / "m2"),
                 *options]) == 2
    error = capsys.readouterr().err.strip()
    assert "s3://graft-test/missing does not exist" in error and len(error.splitlines()) == 1
    assert main(["train", uri, "--out", "s3://graft-test/model", *options]) == 2
    assert "graft writes the model to local disk" in capsys.readouterr().err

    # trained from a feature file extracted from the bucket: the bucket is still its data
    assert main(["extract", uri, "--out", str(tmp_path / "f.h5"), *options]) == 0
    assert main(["train", str(tmp_path / "f.h5"), "--out", str(tmp_path / "m3"), *options]) == 0
    assert evaluate(tmp_path / "m3", uri, cache_dir=tmp_path / "cache",
                    progress=False).split == "test"


def test_data_check_reads_s3(s3, tmp_path):
    import shutil

    from graft.data.check import check_dataset, write_check_page

    data = make_dataset(tmp_path / "data", n_per_class=4)
    shutil.copy(data / "red" / "red_000.jpg", data / "blue" / "looks_blue.jpg")  # a conflict
    (data / "green" / "empty.png").write_bytes(b"")
    uri = s3.upload(data, "check")
    local = check_dataset(assign_splits(scan_dataset(data)), progress=False).to_dict()
    remote = check_dataset(assign_splits(scan_dataset(uri)), progress=False).to_dict()
    assert remote.pop("root") == uri and local.pop("root") == str(data)
    assert remote == local
    assert len(remote["label_conflicts"]) == 1 and len(remote["unreadable"]) == 1
    page = write_check_page(check_dataset(assign_splits(scan_dataset(uri)), progress=False),
                            tmp_path / "check.html").read_text()
    assert "<h1>Data check: check</h1>" in page and "data:image/jpeg;base64," in page


def test_finetune_reads_s3_in_its_loader_workers(s3, tmp_path):
    pytest.importorskip("torch")
    from graft.finetune import FinetuneConfig, finetune
    from graft.workflows.evaluate import evaluate

    uri = s3.upload(make_dataset(tmp_path / "data", n_per_class=8), "finetune")
    config = FinetuneConfig(backbone="test_efficientnet", weights="random", epochs=1,
                            fine_tune_epochs=0, batch_size=8, workers=2, augment="flip",
                            val_size=0.25)
    finetune(uri, out=tmp_path / "ft", config=config, progress=False)
    training = json.loads((tmp_path / "ft" / "graft.json").read_text())["training"]
    assert training["source"] == uri and training["data"] == uri
    assert evaluate(tmp_path / "ft", uri, progress=False).split == "test"
