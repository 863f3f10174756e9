"""`graft data check` with planted exact duplicates, near duplicates (resized and re-encoded
copies) and label conflicts; the warning `graft train` gives; and no false alarm on real data."""

from __future__ import annotations

import json
import shutil

import numpy as np
from conftest import TINY, shared_path
from PIL import Image, ImageDraw

from graft.cli import main
from graft.data import assign_splits, scan_dataset
from graft.data.check import check_dataset


def shapes(path, seed, size=(160, 120)):
    """A photo-like image: a gradient and a few large shapes, different for every seed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, size[0])[None, :, None]
    y = np.linspace(0, 1, size[1])[:, None, None]
    base = (rng.uniform(0, 255, 3) * x + rng.uniform(0, 255, 3) * y) / 2 + rng.uniform(0, 80, 3)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size[0] - 40), rng.integers(0, size[1] - 40)
        box = [int(x0), int(y0), int(x0 + rng.integers(20, 80)), int(y0 + rng.integers(20, 60))]
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)
    return path


def planted(root):
    """train/val/test of cats and dogs, with known problems planted."""
    seed = 0
    for split, n in (("train", 8), ("val", 3), ("test", 3)):
        for label in ("cats", "dogs"):
            for i in range(n):
                seed += 1
                shapes(root / split / label / f"{label}{i}.jpg", seed)
    # 1. exact copy of a training image in test, under another name: a leak
    shutil.copy(root / "train/cats/cats0.jpg", root / "test/cats/copy_of_cats0.jpg")
    # 2. resized and re-encoded copy of a training image in val: a near leak
    with Image.open(root / "train/dogs/dogs1.jpg") as image:
        image.resize((120, 90)).save(root / "val/dogs/smaller_dogs1.jpg", quality=70)
    # 3. the same file under two classes in train: a label conflict
    shutil.copy(root / "train/cats/cats2.jpg", root / "train/dogs/also_cats2.jpg")
    # 4. an exact duplicate within train, same class
    shutil.copy(root / "train/dogs/dogs3.jpg", root / "train/dogs/dogs3_again.jpg")
    # 5. an unreadable file
    (root / "train/cats/broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


def names(group):
    return sorted(m["path"] for m in group["images"])


def test_planted_problems_are_all_found_and_nothing_else(tmp_path):
    root = planted(tmp_path / "data")
    report = check_dataset(scan_dataset(root), progress=False)
    assert [names(g) for g in report.leaks] == [
        ["test/cats/copy_of_cats0.jpg", "train/cats/cats0.jpg"],
        ["train/dogs/dogs1.jpg", "val/dogs/smaller_dogs1.jpg"]]
    assert [g["kind"] for g in report.leaks] == ["exact", "near"]
    assert [names(g) for g in report.label_conflicts] == [
        ["train/cats/cats2.jpg", "train/dogs/also_cats2.jpg"]]
    within = [names(g) for g in report.exact_duplicates if not g["across_splits"]]
    assert sorted(within) == [["train/cats/cats2.jpg", "train/dogs/also_cats2.jpg"],
                              ["train/dogs/dogs3.jpg", "train/dogs/dogs3_again.jpg"]]
    assert len(report.near_duplicates) == 1  # the planted one; no false alarm among 42 images
    assert report.unreadable == [{"path": "train/cats/broken.jpg",
                                  "reason": report.unreadable[0]["reason"]}]
    assert report.counts["train"] == {"cats": 9, "dogs": 10}
    assert report.imbalance["train"] == round(10 / 9, 2)


def test_the_cli_reports_json_and_a_page_and_fails_on_leaks(tmp_path, capsys):
    root = planted(tmp_path / "data")
    page = tmp_path / "check.html"
    assert main(["data", "check", str(root), "--json", "--html", str(page), "-q"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert found["summary"]["leaks_across_splits"] == 2 and found["summary"]["label_conflicts"] == 1
    text = page.read_text()
    assert "Leaks across splits (2)" in text and text.count("data:image/jpeg;base64,") >= 6
    assert main(["data", "check", str(root), "--no-near", "-q"]) == 1
    out = capsys.readouterr().out
    assert "LEAKS across splits: 1" in out and "copy_of_cats0.jpg" in out
    clean = tmp_path / "clean"
    for i in range(4):
        shapes(clean / "a" / f"{i}.jpg", 100 + i)
        shapes(clean / "b" / f"{i}.jpg", 200 + i)
    assert main(["data", "check", str(clean), "-q"]) == 0
    assert "No leak across splits" in capsys.readouterr().out


def test_unsplit_data_is_checked_under_trains_split(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        shapes(root / "a" / f"{i}.jpg", i)
        shapes(root / "b" / f"{i}.jpg", 50 + i)
    for i in range(10):  # exact copies under new names: some land in another split
        shutil.copy(root / "a" / f"{i}.jpg", root / "a" / f"copy{i}.jpg")
    report = check_dataset(assign_splits(scan_dataset(root), test_size=0.3), progress=False)
    assert len(report.exact_duplicates) == 10
    assert report.leaks and all(g["across_splits"] for g in report.leaks)
    assert set(report.counts) == {"train", "test"}


def test_train_warns_about_leaks_and_records_them(tmp_path, capsys):
    root = planted(tmp_path / "data")
    (root / "train/cats/broken.jpg").unlink()
    assert main(["train", str(root), "--out", str(tmp_path / "m"), "--backbone", TINY,
                 "--weights", "random", "-q"]) == 0
    err = capsys.readouterr().err
    assert "Warning: 1 image(s) with the same content in more than one split" in err
    assert "same content under two classes" in err
    check = json.loads((tmp_path / "m" / "metrics.json").read_text())["data_check"]
    assert check["leaks_across_splits"] == 1 and check["label_conflicts"] == 1


def near_groups_are_real(report, root):
    """Every near-duplicate group's images look alike: 64x64 grayscale, mean difference under
    30 (different photos of one flowers17 class differ by 40 or more in 95 % of random pairs;
    re-cropped copies of one photo by about 25, re-saved ones by 0)."""
    for group in report.near_duplicates:
        pixels = [np.asarray(Image.open(root / m["path"]).convert("L").resize((64, 64)),
                             np.float32) for m in group["images"]]
        for other in pixels[1:]:
            assert np.abs(pixels[0] - other).mean() < 30, names(group)


def test_real_datasets_raise_no_false_alarm():
    for name in ("hymenoptera", "flowers17"):
        root = shared_path("datasets", name)
        report = check_dataset(assign_splits(scan_dataset(root)), progress=False)
        near_groups_are_real(report, root)
