"""--precision int8: the backbone quantized once, calibrated on training images, and the same int8
graph used for the features, the model directory and prediction."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import TINY, make_dataset

import graft
from graft.cli import main

TINY_ARGS = ["--backbone", TINY, "--weights", "random", "-q"]


def test_int8_train_predict_evaluate_and_cache(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=10)
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert main(["train", str(data), "--out", str(fp32), *TINY_ARGS]) == 0
    assert main(["train", str(data), "--out", str(int8), "--precision", "int8", *TINY_ARGS]) == 0
    assert "Quantizing the backbone to int8, calibrated on 21 training images" in \
        capsys.readouterr().err
    config = json.loads((int8 / "graft.json").read_text())
    (backbone,) = config["backbones"]
    assert backbone["precision"] == "int8"
    fp32_key = json.loads((fp32 / "graft.json").read_text())["backbones"][0]["feature_key"]
    assert backbone["feature_key"] != fp32_key  # int8 features never mix with fp32 ones
    ops = {node.op_type for node in onnx.load(str(int8 / "backbone.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    metrics = json.loads((int8 / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9  # scored with the saved int8 graph (checked end to end)
    assert main(["evaluate", str(int8), str(data), "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    probe = sorted((data / "blue").glob("*.jpg"))[0]
    assert graft.load(int8)(probe, top_k=1)[0]["label"] == "blue"
    # A re-run finds the quantized graph in the cache.
    assert main(["train", str(data), "--out", str(int8), "--precision", "int8", *TINY_ARGS]) == 0
    assert "Quantizing" not in capsys.readouterr().err


def test_int8_feature_files(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=6)
    features = tmp_path / "f.h5"
    assert main(["extract", str(data), "--out", str(features), "--precision", "int8",
                 *TINY_ARGS]) == 0
    assert main(["train", str(features), "--out", str(tmp_path / "m"), "-q"]) == 2
    assert "--precision int8" in capsys.readouterr().err
    assert main(["train", str(features), "--out", str(tmp_path / "m"), "--precision", "int8",
                 "-q"]) == 0
    assert json.loads((tmp_path / "m" / "graft.json").read_text())["backbones"][0][
        "precision"] == "int8"


def test_precision_is_checked(tmp_path, capsys):
    data = make_dataset(tmp_path / "colors", n_per_class=3)
    with pytest.raises(SystemExit):
        main(["train", str(data), "--precision", "int4"])
    # the library names its parameter, the CLI (above) its flag
    with pytest.raises(graft.ConfigError, match="^precision must be one of fp32, int8"):
        graft.train(data, out=tmp_path / "m", precision="int4", backbone=TINY,
                    weights="random")
