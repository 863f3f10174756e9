"""Finding images, splitting them stably, and decoding every kind of file."""

from __future__ import annotations

import collections
import io
import tracemalloc

import numpy as np
import pytest
from conftest import make_dataset, make_image
from PIL import Image

from graft.data import (
    PreprocessConfig,
    assign_splits,
    iter_image_files,
    resize_and_crop,
    scan_dataset,
    split_fraction,
)
from graft.data.dataset import stream_dataset
from graft.errors import ConfigError, DataError, ImageError
from graft.inference import load_image, to_rgb


def test_class_folders_nested_and_non_images_ignored(tmp_path):
    make_dataset(tmp_path, n_per_class=3, classes=("red", "blue"))
    make_image(tmp_path / "red" / "deeper" / "nested.png", (200, 0, 0), 1)
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    (tmp_path / "red" / ".DS_Store").write_bytes(b"\0\1")
    dataset = scan_dataset(tmp_path)
    assert dataset.classes == ["blue", "red"]
    assert dataset.layout == "folders"
    assert len(dataset) == 7
    assert "red/deeper/nested.png" in {s.relpath for s in dataset.samples}
    assert {s.label for s in dataset.samples if "nested" in s.relpath} == {"red"}


def test_presplit_layout_uses_given_splits(tmp_path):
    make_dataset(tmp_path / "train", n_per_class=3, classes=("red", "blue"))
    make_dataset(tmp_path / "validation", n_per_class=2, classes=("red", "blue"), start=10)
    dataset = assign_splits(scan_dataset(tmp_path))
    assert dataset.layout == "presplit"
    counts = dataset.counts()
    # train/val only: the held-out val folder is the test split
    assert counts == {"train": {"blue": 3, "red": 3}, "test": {"blue": 2, "red": 2}}


def test_presplit_with_test_keeps_val(tmp_path):
    for split in ("train", "val", "test"):
        make_dataset(tmp_path / split, n_per_class=2, classes=("red", "blue"))
    counts = assign_splits(scan_dataset(tmp_path)).counts()
    assert set(counts) == {"train", "val", "test"}


@pytest.mark.parametrize("extra", ["splits", "annotations/deep", "meta"])
def test_presplit_with_a_folder_of_no_images_is_still_presplit(tmp_path, extra, caplog):
    make_dataset(tmp_path / "train", n_per_class=3, classes=("red", "blue"))
    make_dataset(tmp_path / "test", n_per_class=2, classes=("red", "blue"), start=10)
    (tmp_path / extra).mkdir(parents=True)
    (tmp_path / extra / "train.txt").write_text("red/red_000.jpg\n")
    with caplog.at_level("INFO", logger="graft"):
        held = assign_splits(scan_dataset(tmp_path))
    streamed = stream_dataset(tmp_path)
    for dataset in (held, streamed):
        assert dataset.layout == "presplit"
        assert dataset.classes == ["blue", "red"]
    assert held.counts() == {"train": {"blue": 3, "red": 3}, "test": {"blue": 2, "red": 2}}
    assert [s.relpath for s in streamed] == [s.relpath for s in held.samples]
    top = extra.split("/")[0]
    assert any(f"'{top}' (no images)" in r.getMessage() for r in caplog.records)


def test_presplit_with_a_folder_of_images_warns_and_ignores_it(tmp_path, caplog):
    make_dataset(tmp_path / "train", n_per_class=3, classes=("red", "blue"))
    make_dataset(tmp_path / "val", n_per_class=2, classes=("red", "blue"), start=10)
    make_dataset(tmp_path / "unlabeled", n_per_class=2, classes=("green",))
    with caplog.at_level("WARNING", logger="graft"):
        dataset = scan_dataset(tmp_path)
    assert dataset.layout == "presplit" and dataset.classes == ["blue", "red"]
    assert not any(s.relpath.startswith("unlabeled/") for s in dataset.samples)
    assert any("'unlabeled'" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_a_stray_image_in_the_train_folder_keeps_the_data_presplit(tmp_path):
    make_dataset(tmp_path / "train", n_per_class=3, classes=("red", "blue"))
    make_dataset(tmp_path / "test", n_per_class=2, classes=("red", "blue"), start=10)
    make_image(tmp_path / "train" / "preview.jpg", (0, 0, 0), 1)
    for dataset in (scan_dataset(tmp_path), stream_dataset(tmp_path)):
        assert dataset.layout == "presplit" and dataset.classes == ["blue", "red"]


def test_split_names_as_classes_are_refused(tmp_path, caplog):
    # images directly in train/ and test/: read as classes, which name splits
    for split in ("train", "test"):
        for i in range(3):
            make_image(tmp_path / split / f"{split}_{i}.jpg", (200, 0, 0), i)
    with pytest.raises(DataError, match="split names"):
        scan_dataset(tmp_path)
    with pytest.raises(DataError, match="split names"):
        stream_dataset(tmp_path)
    (tmp_path / "list.csv").write_text("path,label\ntrain/train_0.jpg,train\n"
                                       "test/test_0.jpg,test\n")
    with pytest.raises(DataError, match="split names"):
        scan_dataset(tmp_path / "list.csv")
    # one class named like a split (a 'train' among vehicles) is a warning, not an error
    single = tmp_path / "vehicles"
    make_dataset(single, n_per_class=2, classes=("red", "blue"))
    for i in range(2):
        make_image(single / "train" / f"t{i}.jpg", (0, 0, 200), i)
    with caplog.at_level("WARNING", logger="graft"):
        assert scan_dataset(single).classes == ["blue", "red", "train"]
    assert any("named like a split" in r.getMessage() for r in caplog.records)


def test_csv_layout(tmp_path):
    make_dataset(tmp_path / "imgs", n_per_class=2, classes=("red", "blue"))
    rows = ["path,label"] + [f"imgs/{c}/{c}_{i:03d}.jpg,{c}" for c in ("red", "blue") for i in (0, 1)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    dataset = scan_dataset(tmp_path / "data.csv")
    assert dataset.layout == "csv" and dataset.classes == ["blue", "red"] and len(dataset) == 4
    (tmp_path / "bad.csv").write_text("imgs/red/missing.jpg,red\n")
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "bad.csv")


def test_empty_and_single_class_errors(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="No images found"):
        scan_dataset(tmp_path)
    make_image(tmp_path / "a" / "x.png", (1, 2, 3), 0)
    with pytest.raises(DataError, match="at least two class"):
        scan_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nope")


def test_split_is_stable_when_images_are_added(tmp_path):
    make_dataset(tmp_path, n_per_class=40, classes=("red", "blue"))
    before = {s.relpath: s.split for s in assign_splits(scan_dataset(tmp_path)).samples}
    make_dataset(tmp_path, n_per_class=40, classes=("red", "blue"), start=40)
    after = {s.relpath: s.split for s in assign_splits(scan_dataset(tmp_path)).samples}
    assert all(after[path] == split for path, split in before.items())
    test_share = sum(split == "test" for split in after.values()) / len(after)
    assert 0.1 < test_share < 0.3
    # independent of listing order and deterministic per seed
    assert split_fraction("red/a.jpg", seed=1) == split_fraction("red/a.jpg", seed=1)
    assert split_fraction("red/a.jpg", seed=1) != split_fraction("red/a.jpg", seed=2)


def test_nohash_and_group_regex_keep_groups_together():
    assert split_fraction("dog/rex_nohash_1.jpg") == split_fraction("dog/rex_nohash_2.jpg")
    assert split_fraction("dog/rex_1.jpg") != split_fraction("dog/rex_2.jpg")
    regex = r"(patient\d+)"
    assert split_fraction("x/patient7_a.png", group_regex=regex) == split_fraction(
        "y/patient7_b.png", group_regex=regex)


def test_every_class_keeps_a_training_image(tmp_path):
    make_dataset(tmp_path, n_per_class=2, classes=("red", "blue"))
    dataset = assign_splits(scan_dataset(tmp_path), test_size=0.9)
    for label in dataset.classes:
        assert any(s.split == "train" and s.label == label for s in dataset.samples)


def test_split_parameter_errors(tmp_path):
    make_dataset(tmp_path, n_per_class=2, classes=("red", "blue"))
    with pytest.raises(ConfigError, match="^test_size must be in") as error:
        assign_splits(scan_dataset(tmp_path), test_size=1.5)
    assert error.value.parameters == ("test_size",)
    with pytest.raises(ConfigError, match="below 1"):
        assign_splits(scan_dataset(tmp_path), test_size=0.6, val_size=0.5)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_modes_convert_to_rgb(mode):
    rgb = Image.new("RGB", (8, 8), (255, 0, 0))
    if mode in ("I;16", "I"):
        image = Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16))
        image = image if mode == "I;16" else image.convert("I")
    else:
        image = rgb.convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode in ("I;16", "I"):
        assert abs(int(np.asarray(out)[0, 0, 0]) - 127) <= 1  # scaled, not clipped to 255


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "TIFF", "JPEG"])
def test_formats(tmp_path, fmt):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.new("RGB", (30, 30), (10, 200, 30)).save(path, format=fmt)
    assert load_image(path).mode == "RGB"


def test_bad_files_raise_image_error_with_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not a jpeg")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "truncated.jpg")


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(tmp_path / "big.png")


def test_resize_and_crop_matches_timm_geometry():
    config = PreprocessConfig(input_size=(3, 224, 224), crop_pct=0.875)
    image = Image.new("RGB", (640, 480), (5, 5, 5))
    assert config.scale_size == (256, 256)
    assert resize_and_crop(image, config).shape == (224, 224, 3)
    squash = PreprocessConfig(input_size=(3, 100, 120), crop_mode="squash", crop_pct=1.0)
    assert resize_and_crop(image, squash).shape == (100, 120, 3)
    with pytest.raises(ConfigError, match="crop_mode"):
        PreprocessConfig(crop_mode="diagonal")


def test_iter_image_files_streams_sorted(tmp_path):
    make_dataset(tmp_path, n_per_class=3, classes=("red",))
    (tmp_path / "red" / "readme.md").write_text("x")
    files = list(iter_image_files(tmp_path))
    assert [f.name for f in files] == sorted(f.name for f in files) and len(files) == 3
    with pytest.raises(DataError):
        list(iter_image_files(tmp_path / "missing"))


def test_augmented_views_are_reproducible_and_differ():
    from graft.data.augment import augment_for_network, parse_augment

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8))
    config = PreprocessConfig(input_size=(3, 64, 64))
    spec = parse_augment("flip,rotate,crop,color")
    first = augment_for_network(image, config, spec, np.random.default_rng(1))
    again = augment_for_network(image, config, spec, np.random.default_rng(1))
    other = augment_for_network(image, config, spec, np.random.default_rng(2))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    plain = augment_for_network(image, config, (), np.random.default_rng(1))
    np.testing.assert_array_equal(plain, resize_and_crop(image, config))


def test_image_errors_carry_the_reason_apart_from_the_name(tmp_path):
    odd = tmp_path / "a: b.jpg"  # a name with ': ' in it
    odd.write_bytes(b"not an image")
    with pytest.raises(ImageError) as info:
        load_image(odd)
    assert info.value.reason == "not an image PIL can identify"
    assert info.value.source == str(odd) and str(info.value).startswith(str(odd))


def _touch(path):
    """An image file for listing only (listing never opens it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


# Names where a folder's name plus "/" sorts differently from the name alone ("a-b" < "a/" but
# "a" < "a-b"), nested folders, hidden files and folders, non-images, a model directory
TRICKY = ["a/x.jpg", "a-b/y.png", "a.b/z.JPG", "a/sub/q.jpg", "a/sub-2/r.jpg", "a/sub.x/s.jpg",
          "a/sub/deeper/t.png", "a-b/.hidden.jpg", "a-b/notes.txt", "a/.cache/u.jpg",
          "model/graft.json", "model/w.jpg", "b/B.jpg", "b/a.jpg", "b/_nohash_1.jpg"]


@pytest.mark.parametrize("options", [{}, {"val_size": 0.2}, {"test_size": 0.9, "seed": 3},
                                     {"group_regex": r"(sub[^/]*)"}])
@pytest.mark.parametrize("presplit", ["", "train/", "train+val", "train+val+test"])
def test_streamed_listing_equals_the_held_one(tmp_path, presplit, options):
    """stream_dataset lists, orders and splits exactly as assign_splits(scan_dataset(...))."""
    splits = presplit.split("+") if "+" in presplit else [presplit.rstrip("/")]
    for split in splits:
        for name in TRICKY:
            _touch(tmp_path / split / name)
    held = assign_splits(scan_dataset(tmp_path), **options)
    stream = stream_dataset(tmp_path, **options)
    assert stream.streamed and len(stream) == len(held.samples)
    assert list(stream) == held.samples
    assert list(stream) == held.samples  # a second pass lists the same again
    assert (stream.classes, stream.layout, stream.split_source, stream.split_params) == (
        held.classes, held.layout, held.split_source, held.split_params)
    assert [s.relpath for s in held.samples] == sorted(s.relpath for s in held.samples)
    from graft.features.quantize import calibration_images

    for limit in (3, 100):  # int8 calibration: the same images either way
        assert stream.spread("train", limit) == calibration_images(
            [s.path for s in held.samples if s.split == "train"], limit)
    # graft evaluate's listings: the data's own splits only, and one split at a time
    raw = scan_dataset(tmp_path)
    unsplit = stream_dataset(tmp_path, assign=False)
    assert list(unsplit) == raw.samples and len(unsplit) == len(raw.samples)
    assert (unsplit.classes, unsplit.layout, unsplit.split_source, unsplit.split_params) == (
        raw.classes, raw.layout, raw.split_source, raw.split_params)
    # the first look counts each split, so choosing one needs no further listing
    assert stream.split_sizes == dict(collections.Counter(s.split for s in held.samples))
    assert unsplit.split_sizes == dict(collections.Counter(s.split for s in raw.samples))
    for split in ("train", "val", "test"):
        chosen = stream.only(split)
        assert list(chosen) == [s for s in held.samples if s.split == split] == list(chosen)
        assert len(chosen) == sum(s.split == split for s in held.samples)


def test_a_listing_without_splits_drawn_needs_no_training_split(tmp_path):
    """graft evaluate --split all lists a pre-split folder as the data gives it: a folder with
    no training images (a test set) is listed, where drawing splits refuses it."""
    for name in ("val/a/1.jpg", "val/b/2.jpg", "test/a/3.jpg", "test/b/4.jpg"):
        _touch(tmp_path / name)
    for name in ("train/a", "train/b"):  # its class folders, without images
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(DataError, match="train"):
        stream_dataset(tmp_path)
    raw = stream_dataset(tmp_path, assign=False)
    assert [(s.relpath, s.split) for s in raw] == [
        (s.relpath, s.split) for s in scan_dataset(tmp_path).samples]
    assert len(raw) == 4 and raw.split_source == "folders"


def test_streamed_listing_errors_and_held_layouts(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="No images found"):
        stream_dataset(tmp_path)
    _touch(tmp_path / "loose.jpg")
    with pytest.raises(DataError, match="lie directly in it"):
        stream_dataset(tmp_path)
    _touch(tmp_path / "a" / "x.png")
    with pytest.raises(DataError, match="at least two class"):
        stream_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        stream_dataset(tmp_path / "nope")
    _touch(tmp_path / "b" / "y.png")
    with pytest.raises(ConfigError, match="below 1"):
        stream_dataset(tmp_path, test_size=0.6, val_size=0.5)
    (tmp_path / "data.csv").write_text("path,label\na/x.png,a\nb/y.png,b\n")
    csv = stream_dataset(tmp_path / "data.csv")  # a CSV is read whole, as scan_dataset does
    assert not csv.streamed and [s.relpath for s in csv] == ["a/x.png", "b/y.png"]
    assert {s.split for s in csv} <= {"train", "test"}


def test_streamed_listing_memory_does_not_grow_with_the_images(tmp_path):
    """What iterating holds is one folder's names, not the images: 10x the images in 10x the
    folders adds nothing near what the listing held whole takes."""
    def peak(root, folders):
        for f in range(folders):
            for i in range(40):
                _touch(root / f"class{f % 4}" / f"part{f:03d}" / f"{i:05d}_image_file_name.jpg")
        stream = stream_dataset(root)
        tracemalloc.start()
        try:
            count = sum(1 for _ in stream)
            return count, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small_count, small_peak = peak(tmp_path / "small", 5)
    large_count, large_peak = peak(tmp_path / "large", 50)
    assert (small_count, large_count) == (200, 2000)
    tracemalloc.start()
    held = assign_splits(scan_dataset(tmp_path / "large")).samples
    held_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held) == 2000
    # the held list takes about 250 B per image; streaming 1,800 more images adds under 10 KB
    assert held_bytes > 2000 * 200
    assert large_peak - small_peak < 10_000


def test_a_file_removed_after_the_first_look_moves_no_other_image(tmp_path):
    """The image a class gives to train (when all of its images drew test) is named by its path:
    a listing that lost a file splits every other file as before."""
    for label in ("a", "b"):
        for i in range(3):
            _touch(tmp_path / label / f"{i}.jpg")
    stream = stream_dataset(tmp_path, test_size=0.95)
    before = {s.relpath: s.split for s in stream}
    assert [before[f"{c}/{i}.jpg"] for c in "ab" for i in range(3)].count("train") == 2
    for relpath in sorted(before):
        (tmp_path / relpath).unlink()
        after = {s.relpath: s.split for s in stream}
        assert after == {p: split for p, split in before.items() if (tmp_path / p).exists()}
        _touch(tmp_path / relpath)
    _touch(tmp_path / "c" / "0.jpg")  # a class made after the first look is not in the dataset
    assert {s.relpath: s.split for s in stream} == before and stream.classes == ["a", "b"]
