"""End to end through the CLI, on synthetic images and a tiny random-weight backbone."""

from __future__ import annotations

import csv
import json
import os
import re
import signal

import pytest
from conftest import TINY, make_dataset, make_image

import graft
from graft.cli import main
from graft.data import assign_splits, scan_dataset
from graft.data.fetch import fetch_dataset
from graft.inference.batches import iter_decoded_batches

TINY_ARGS = ["--backbone", TINY, "--weights", "random", "-q"]


@pytest.fixture
def trained(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=12)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    model = tmp_path / "model"
    assert main(["train", str(data), "--out", str(model), *TINY_ARGS]) == 0
    out = capsys.readouterr()
    return data, model, out


def test_train_writes_model_and_report(trained):
    data, model, out = trained
    assert "precision" in out.out and "accuracy" in out.out
    assert "Skipped 1 file(s)" in out.err and "red/broken.jpg" in out.err
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert metrics["scored_with"] == "saved model (graft.inference)"
    umask = os.umask(0o022)
    os.umask(umask)
    assert model.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not private
    assert metrics["n_train"] + metrics["n_test"] == 36
    assert set(metrics["per_class"]) == {"blue", "green", "red"}
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_test"]
    assert metrics["skipped"][0]["path"] == "red/broken.jpg"
    config = json.loads((model / "graft.json").read_text())
    assert config["labels"] == ["blue", "green", "red"]
    (backbone,) = config["backbones"]
    assert backbone["name"] == TINY and len(backbone["weights_sha256"]) == 64
    assert backbone["preprocess"]["input_size"] == [3, 160, 160]
    assert backbone["file"]["path"] == "backbone.onnx"
    assert config["head"]["name"] == "logreg" and "C" in config["head"]["best_params"]
    assert {"torch", "onnxruntime", "scikit-learn"} <= set(config["versions"])
    assert (model / "backbone.onnx").is_file() and (model / "head.onnx").is_file()


def test_predict_json_csv_and_folders(trained, tmp_path, capsys):
    data, model, _ = trained
    probe = make_image(tmp_path / "probe" / "x.png", (40, 60, 200), seed=999)
    assert main(["predict", str(model), str(probe), str(data / "green"), "--json",
                 "--top-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 + 12
    assert lines[0]["predictions"][0]["label"] == "blue"
    assert len(lines[0]["predictions"]) == 2
    assert lines[0]["predictions"][0]["score"] >= lines[0]["predictions"][1]["score"]
    green = [line for line in lines[1:] if line["predictions"][0]["label"] == "green"]
    assert len(green) >= 10
    out_csv = tmp_path / "p.csv"
    # Exit status 1: some inputs could not be read (each is reported).
    assert main(["predict", str(model), str(data / "red"), "--csv", str(out_csv)]) == 1
    assert "1 of 13 file(s) could not be read" in capsys.readouterr().err
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 13  # 12 images + the broken one, reported with its error
    assert any(row["error"] for row in rows)
    assert all(row["top_k"] for row in rows if not row["error"])


def test_evaluate_scores_the_held_out_split_of_training_data(trained, capsys):
    data, model, _ = trained
    trained_metrics = json.loads((model / "metrics.json").read_text())
    assert main(["evaluate", str(model), str(data), "--json", "-q"]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    # Only the held-out test split, recomputed from graft.json, and the console says so.
    assert metrics["split"] == "test" and "Scoring the test split" in out.err
    assert metrics["n_test"] == trained_metrics["n_test"] < 36
    assert metrics["confusion_matrix"] == trained_metrics["confusion_matrix"]
    assert metrics["accuracy"] == pytest.approx(trained_metrics["accuracy"])
    assert metrics["overlap_with_training"] == 0
    # --split all scores everything, warns, and counts the training images it saw.
    assert main(["evaluate", str(model), str(data), "--split", "all", "--json", "-q"]) == 0
    out = capsys.readouterr()
    everything = json.loads(out.out)
    assert everything["n_test"] == 36  # every readable image (the broken one is skipped)
    assert everything["overlap_with_training"] == trained_metrics["n_train"]
    assert "inflated" in out.err and f"{trained_metrics['n_train']} of the 36" in out.err
    assert "the default, --split test, scores" in out.err  # the library's note, in flags


def test_evaluate_counts_copies_of_training_images(trained, tmp_path, capsys):
    import shutil

    data, model, _ = trained
    other = make_dataset(tmp_path / "other", n_per_class=3, start=500)
    for name in sorted((data / "green").iterdir())[:4]:  # renamed copies of training images
        shutil.copyfile(name, other / "green" / f"copy-{name.name}")
    assert main(["evaluate", str(model), str(other), "--json", "-q"]) == 0
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    assert metrics["split"] == "all" and metrics["n_test"] == 13
    train_config = json.loads((model / "graft.json").read_text())
    assert train_config["files"]["train_fingerprints"]["path"]
    assert 1 <= metrics["overlap_with_training"] <= 4
    assert "also in the model's training data" in out.err


def test_extract_then_train_from_features(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=10)
    features = tmp_path / "features.h5"
    assert main(["extract", str(data), "--out", str(features), *TINY_ARGS]) == 0
    assert main(["train", str(features), "--out", str(tmp_path / "m1"), "-q"]) == 0
    assert main(["train", str(data), "--out", str(tmp_path / "m2"), *TINY_ARGS]) == 0
    m1 = json.loads((tmp_path / "m1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    assert m1["confusion_matrix"] == m2["confusion_matrix"]  # same split, same features
    assert "from cache" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["softmax", "mlp", "auto"])
def test_other_heads(tmp_path, head):
    data = make_dataset(tmp_path / "colors", n_per_class=10)
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "--head", head,
                 *TINY_ARGS]) == 0
    config = json.loads((tmp_path / "m" / "graft.json").read_text())
    assert config["head"]["name"] in ("softmax", "mlp", "logreg", "linear-svm", "svm", "knn")


def test_user_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1  # one line, no trace
    assert main(["predict", str(tmp_path), "x.jpg"]) == 2
    assert "not a graft model directory" in capsys.readouterr().err
    data = make_dataset(tmp_path / "colors", n_per_class=3)
    assert main(["train", str(data), "--backbone", "nosuchnet", "-q"]) == 2
    assert "Unknown backbone" in capsys.readouterr().err
    tiny = ["--backbone", "test_efficientnet", "--weights", "random", "-q"]
    out = ["--out", str(tmp_path / "f.h5")]
    for device in ("cpu", "torch"):  # mixed precision is a GPU's
        assert main(["extract", str(data), *out, *tiny, "--device", device,
                     "--precision", "fp16"]) == 2
        err = capsys.readouterr().err  # the advice names the flag to type
        assert "mixed" in err and "on a GPU: use it with --device" in err
    import torch

    if not torch.cuda.is_available():
        for command in (["extract", str(data), *out], ["finetune", str(data)]):
            assert main([*command, *tiny, "--device", "cuda"]) == 2
            err = capsys.readouterr().err
            assert "sees no CUDA device" in err and len(err.strip().splitlines()) == 1


PARAMETER_MISTAKES = [  # (CLI arguments, the same mistake in Python, parameter, flag)
    (["predict", "MODEL", "x.jpg", "--top-k", "0"],
     lambda tmp: graft.predict(tmp, [], top_k=0), "top_k", "--top-k"),
    (["evaluate", "MODEL", "DATA", "--batch-size", "0"],
     lambda tmp: graft.evaluate(tmp, tmp, batch_size=0), "batch_size",
     "--batch-size"),
    (["data", "check", "DATA", "--test-size", "0.6", "--val-size", "0.5"],
     lambda tmp: assign_splits(scan_dataset(tmp / "colors"), test_size=0.6, val_size=0.5),
     "test_size + val_size", "--test-size + --val-size"),
    (["data", "fetch", "hymenoptera", "--sha256", "xyz"],
     lambda tmp: fetch_dataset("hymenoptera", tmp, sha256="xyz"), "sha256", "--sha256"),
    (["predict", "MODEL", "x.jpg", "--batch-size", "0"],
     lambda tmp: iter_decoded_batches([], [], batch_size=0).__next__(), "batch_size",
     "--batch-size"),
]


@pytest.mark.parametrize("argv, call, parameter, flag", PARAMETER_MISTAKES)
def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys, argv, call,
                                                                parameter, flag):
    make_dataset(tmp_path / "colors", n_per_class=3)
    with pytest.raises(graft.ConfigError) as error:
        call(tmp_path)
    assert str(error.value).startswith(parameter + " must") and "--" not in str(error.value)
    names = {"MODEL": str(tmp_path), "DATA": str(tmp_path / "colors")}
    assert main([names.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graft: error: {flag} must") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_tampered_model_is_refused(trained, capsys):
    _, model, _ = trained
    with open(model / "head.onnx", "ab") as handle:
        handle.write(b"tampered")
    assert main(["predict", str(model), str(model)]) == 2
    assert "SHA-256" in capsys.readouterr().err


def test_augment_views_are_cached_training_rows(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=8)
    args = ["train", str(data), "--out", str(tmp_path / "m"), "--augment-views", "2",
            "--augment", "flip,rotate,crop,color", *TINY_ARGS]
    assert main(args) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    views = metrics["augment_views"]
    assert views["n_train_rows"] == 3 * metrics["n_train"]
    assert views["augment"] == ["flip", "rotate", "crop", "color"]
    assert metrics["n_train"] + metrics["n_test"] == 24  # the test split is never augmented
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.search(r"Augmented views .*: (\d+) images: \1 from cache, 0 extracted", err), err
    again = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert again["confusion_matrix"] == metrics["confusion_matrix"]  # same views, same model


def test_augment_views_need_images(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=4)
    assert main(["extract", str(data), "--out", str(tmp_path / "f.h5"), *TINY_ARGS]) == 0
    assert main(["train", str(tmp_path / "f.h5"), "--augment-views", "2", "-q"]) == 2
    assert "needs the images" in capsys.readouterr().err


def test_output_inside_data_or_over_other_files_is_refused(tmp_path, capsys, monkeypatch):
    data = make_dataset(tmp_path / "colors", n_per_class=4)
    monkeypatch.chdir(data)  # `cd data && graft train .`: the default --out is inside DATA
    assert main(["train", ".", *TINY_ARGS]) == 2
    assert "inside the dataset" in capsys.readouterr().err
    assert not (data / "graft-model").exists()
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["train", str(data), "--out", str(precious), *TINY_ARGS]) == 2
    assert "not a graft model directory" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_model_directory_inside_data_is_not_a_class(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=6)
    model = tmp_path / "m"
    assert main(["train", str(data), "--out", str(model), *TINY_ARGS]) == 0
    import shutil

    shutil.copytree(model, data / "graft-model")  # e.g. from an older graft, or copied by hand
    assert main(["train", str(data), "--out", str(model), *TINY_ARGS]) == 0
    config = json.loads((model / "graft.json").read_text())
    assert config["labels"] == ["blue", "green", "red"]


def test_predict_exit_status_when_nothing_is_readable(trained, tmp_path, capsys):
    _, model, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(model), str(empty)]) == 2
    assert "No images found" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["predict", str(model), str(bad)]) == 1
    assert "1 of 1 file(s) could not be read" in capsys.readouterr().err


def _default_sigint() -> None:
    """Run in the child between fork and exec: no import, only two system calls."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_starting_prints_no_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    # an empty cache (the backbone's graph must be exported: torch is imported) and 300 images,
    # so the run cannot be over when the signal comes, even with torch's files in the page
    # cache (with 9 images and the suite's cache it ended within the second, twice)
    data = make_dataset(tmp_path / "colors", n_per_class=100)
    process = subprocess.Popen(
        [sys.executable, "-c", "from graft._entry import run; run()", "train", str(data),
         "--out", str(tmp_path / "m"), *TINY_ARGS],
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GRAFT_CACHE_DIR": str(tmp_path / "empty-cache")},
        # Ctrl-C as in a terminal: a child inherits an ignored (or blocked) SIGINT, and then
        # Python never turns it into KeyboardInterrupt (in full suite runs the run went on to
        # the end)
        preexec_fn=_default_sigint)  # noqa: PLW1509 (two system calls, no lock taken)
    parent = signal.getsignal(signal.SIGINT)
    time.sleep(0.5)  # while the training stack is still being imported
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, (parent, err)
    assert "Traceback" not in err and "interrupted" in err


def test_predict_csv_is_untouched_when_the_model_fails(tmp_path, capsys):
    out_csv = tmp_path / "keep.csv"
    out_csv.write_text("precious\n")
    assert main(["predict", str(tmp_path / "no-model"), str(tmp_path), "--csv",
                 str(out_csv)]) == 2
    assert out_csv.read_text() == "precious\n"
