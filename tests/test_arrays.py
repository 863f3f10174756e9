"""Arrays in: a .npz, CIFAR-10's binary batches, and uint8 arrays in the Python API, trained like
image folders and cached by content."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import COLORS, TINY

import graft
from graft.cli import main
from graft.data import scan_dataset
from graft.data.arrays import array_images, read_cifar10_binary


def colour_images(n_per_class: int, classes=("red", "green", "blue"), size=(24, 28), seed=0):
    rng = np.random.default_rng(seed)
    x, y = [], []
    for name in classes:
        for _ in range(n_per_class):
            pixels = np.array(COLORS[name]) + rng.normal(0, 25, (*size, 3))
            x.append(np.clip(pixels, 0, 255).astype(np.uint8))
            y.append(name)
    return np.stack(x), np.array(y)


def test_train_on_an_npz_then_again_from_the_cache(tmp_path, capsys):
    x, y = colour_images(8)
    split = np.array(["test" if i % 4 == 0 else "train" for i in range(len(y))])
    np.savez(tmp_path / "data.npz", x=x, y=y, split=split)
    args = ["train", str(tmp_path / "data.npz"), "--backbone", TINY, "--weights", "random", "-q"]
    assert main([*args, "--out", str(tmp_path / "m")]) == 0
    first = capsys.readouterr().err
    assert "24 images: 0 from cache, 24 extracted" in first
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_test"] == 6 and metrics["n_train"] == 18
    assert json.loads((tmp_path / "m" / "graft.json").read_text())["labels"] == \
        ["blue", "green", "red"]
    assert main([*args, "--out", str(tmp_path / "m2")]) == 0
    assert "24 images: 24 from cache, 0 extracted" in capsys.readouterr().err


def test_npz_inputs_are_checked(tmp_path, capsys):
    x, y = colour_images(2)
    np.savez(tmp_path / "objects.npz", x=x, y=np.array(list(y), dtype=object))
    np.savez(tmp_path / "floats.npz", x=x.astype(np.float32), y=y)
    np.savez(tmp_path / "nolabels.npz", x=x)
    (tmp_path / "notzip.npz").write_bytes(b"\x93NUMPY not an archive")
    good = (tmp_path / "objects.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    for name, message in (("objects", "never unpickles"), ("floats", "must be uint8"),
                          ("nolabels", "has no ['y'] (it has"), ("notzip", "not a .npz file"),
                          ("truncated", "not a .npz file")):
        assert main(["train", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / "m"),
                     "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, name


def test_byte_string_labels_are_text(tmp_path):
    from graft.data.arrays import ArrayData

    x, y = colour_images(2)
    data = ArrayData(x, y.astype("S"), class_names=[b"blue", b"green", b"red"])
    assert data.class_names == ["blue", "green", "red"] and data.y.tolist() == [2, 2, 1, 1, 0, 0]


def cifar_folder(root, n_per_batch=30):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    colours = [COLORS[c] for c in ("red", "green", "blue")]
    for name in ("data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"):
        records = []
        for i in range(n_per_batch):
            label = i % 3
            image = np.clip(np.array(colours[label]) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            records.append(np.concatenate([[label], image.astype(np.uint8).transpose(2, 0, 1)
                                           .ravel()]))
        np.array(records, dtype=np.uint8).tofile(root / name)
    (root / "batches.meta.txt").write_text("airplane\nautomobile\nbird\n\n")
    return root


def test_cifar10_binary_batches_train_directly(tmp_path):
    folder = cifar_folder(tmp_path / "cifar-10-batches-bin")
    data = read_cifar10_binary(folder)
    assert data.x.shape == (90, 32, 32, 3) and data.class_names == ["airplane", "automobile",
                                                                    "bird"]
    red = data.x[data.y == 0].reshape(-1, 3).mean(0)
    assert red[0] > 150 and red[1] < 100  # planar RGB read as HxWx3 in the right order
    dataset = scan_dataset(folder)
    assert dataset.split_source == "folders" and len(dataset.samples) == 90
    assert sorted({s.split for s in dataset.samples}) == ["test", "train"]
    assert main(["train", str(folder), "--out", str(tmp_path / "m"), "--backbone", TINY,
                 "--weights", "random", "-q"]) == 0
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["n_test"] == 30


def test_image_classifier_fits_uint8_arrays_cached_by_content(tmp_path):
    x, y = colour_images(6, size=(20, 20))
    gray = x[..., 0]  # (N, H, W) works too
    clf = graft.ImageClassifier(backbone=TINY, weights="random", head="logreg", progress=False)
    clf.fit(x, y)
    assert (clf.predict(x) == y).mean() > 0.8
    assert clf.predict_proba(gray).shape == (18, 3)
    paths = array_images(x)
    assert array_images(x[::-1]) == paths[::-1]  # the same image is the same file
    assert len(set(paths)) == 18
    with pytest.raises(graft.DataError, match="uint8"):
        clf.fit(x.astype(np.float32), y)
