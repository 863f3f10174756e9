"""Real pretrained weights on real photos (../shared): the accuracy a user gets, offline."""

from __future__ import annotations

import json

import pytest
from conftest import shared_path

from graft.cli import main


@pytest.mark.slow
def test_hymenoptera_default_backbone(tmp_path, capsys):
    data = shared_path("datasets", "hymenoptera")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "-q"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["n_test"] == 153  # its val/ folder is the held-out test
    assert metrics["accuracy"] >= 0.94
    bee = sorted((data / "val" / "bees").glob("*.jpg"))[0]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m"), str(bee), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] == "bees"


@pytest.mark.slow
def test_flowers17_default_backbone(tmp_path):
    data = shared_path("datasets", "flowers17")
    assert main(["train", str(data), "--out", str(tmp_path / "m"), "-q"]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert len(metrics["classes"]) == 17
    assert 0.15 < metrics["n_test"] / (metrics["n_test"] + metrics["n_train"]) < 0.25
    assert metrics["accuracy"] >= 0.95
