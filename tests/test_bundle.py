"""The model directory's typed config: older formats load, newer ones are refused, saving stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset

import graft
from graft.bundle import MODEL_FORMAT_VERSION, BackboneRecipe, ModelConfig, load_model_config
from graft.errors import ConfigError, ModelError

FIXTURES = Path(__file__).parent / "fixtures"
MODEL_V1 = FIXTURES / "model-v1"


def _copy_v1(tmp_path: Path) -> Path:
    return Path(shutil.copytree(MODEL_V1, tmp_path / "model"))


def test_format_1_model_directory_predicts_as_it_did():
    expected = json.loads((FIXTURES / "model-v1-expected.json").read_text())
    predictor = graft.load(MODEL_V1)
    assert predictor.labels == expected["labels"]
    images = [str(FIXTURES / "model-v1-images" / name) for name in expected["images"]]
    np.testing.assert_allclose(predictor.predict_proba(images), expected["probabilities"],
                               atol=1e-5)
    config = predictor.config
    assert config.format_version == 1 and config.backbones[0].name == TINY
    assert config.backbones[0].precision == "fp32" and config.head.name == "logreg"
    assert (config.split.source, config.split.params) == (
        "hash", {"test_size": 0.2, "val_size": 0.0, "seed": 0})
    assert config.training.counts["train"]["blue"] == 6
    assert config.content_hashes_file.path == "train-fingerprints.u64"


def test_format_1_config_is_written_again_as_the_current_format():
    config = load_model_config(MODEL_V1)
    data = config.to_dict()
    assert data["format_version"] == MODEL_FORMAT_VERSION
    assert "split_source" not in data["training"] and data["split"]["source"] == "hash"
    again = ModelConfig.from_dict(json.loads(json.dumps(data)))
    assert again.to_dict() == data
    assert again.backbones == config.backbones and again.head == config.head


def test_newer_format_is_refused(tmp_path):
    model = _copy_v1(tmp_path)
    data = json.loads((model / "graft.json").read_text())
    data["format_version"] = MODEL_FORMAT_VERSION + 1
    (model / "graft.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=rf"newer graft \(model format {MODEL_FORMAT_VERSION + 1}"):
        graft.load(model)


def test_unknown_and_missing_fields_are_refused(tmp_path):
    recipe = load_model_config(MODEL_V1).backbones[0].to_dict()
    with pytest.raises(ModelError, match=r"\['token_pool'\].*newer graft"):
        BackboneRecipe.from_dict({**recipe, "token_pool": "cls"})
    del recipe["num_features"]
    with pytest.raises(ModelError, match="backbone recipe is incomplete"):
        BackboneRecipe.from_dict(recipe)
    model = _copy_v1(tmp_path)
    data = json.loads((model / "graft.json").read_text())
    del data["labels"]
    (model / "graft.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="no 'labels'"):
        graft.load(model)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("data") / "colors", n_per_class=5)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    labels = [Path(p).parent.name for p in paths]
    clf = graft.ImageClassifier(backbone=TINY, weights="random", head="logreg",
                                image_size=32).fit(paths, labels)
    return clf, paths


def test_save_refuses_a_folder_that_is_not_a_model(fitted, tmp_path):
    clf, _ = fitted
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    (folder / "backbone.onnx").write_bytes(b"not graft's")
    with pytest.raises(ConfigError, match=r"directory=.*mine' already exists and is not a graft"):
        clf.save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.onnx", "notes.txt"]
    assert (folder / "backbone.onnx").read_bytes() == b"not graft's"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left behind


def test_save_replaces_a_model_directory_whole(fitted, tmp_path):
    clf, paths = fitted
    out = clf.save(tmp_path / "model")
    (out / "stale.txt").write_text("from the previous model")
    first = json.loads((out / "graft.json").read_text())
    assert first["split"] == {"source": "caller", "test_size": None, "val_size": None,
                              "seed": None, "group_regex": None}
    assert clf.save(out) == out
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    np.testing.assert_allclose(graft.load(out).predict_proba(paths[:4]),
                               clf.predict_proba(paths[:4]), atol=1e-4)
