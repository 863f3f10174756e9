"""The Python API: graft.load / train / evaluate / extract, and ImageClassifier in scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, make_dataset

import graft

TINY_OPTIONS = {"backbone": TINY, "weights": "random"}


def _paths_and_labels(root):
    paths = sorted(root.rglob("*.jpg"))
    return [str(p) for p in paths], [p.parent.name for p in paths]


def test_public_names_are_documented():
    assert "load" in graft.__all__ and "ImageClassifier" in graft.__all__
    for name in graft.__all__:
        if name == "__version__":
            continue
        value = getattr(graft, name)
        assert value.__doc__ and value.__doc__.strip(), f"graft.{name} has no docstring"


def test_train_load_predict_evaluate(tmp_path):
    data = make_dataset(tmp_path / "colors", n_per_class=10)
    result = graft.train(data, out=tmp_path / "model", progress=False, **TINY_OPTIONS)
    assert result.metrics["accuracy"] >= 0.8 and result.model_dir == tmp_path / "model"
    predictor = graft.load(result.model_dir)
    one = predictor(data / "red" / "red_000.jpg", top_k=2)
    assert [p["label"] for p in one][0] == "red" and len(one) == 2
    probabilities = predictor.predict_proba([data / "red" / "red_001.jpg",
                                             (data / "blue" / "blue_001.jpg").read_bytes()])
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    evaluation = graft.evaluate(result.model_dir, data, progress=False)
    assert evaluation.split == "test"
    assert evaluation.metrics["n_test"] == result.metrics["n_test"]
    assert evaluation.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    path, report = graft.extract(data, tmp_path / "f.h5", progress=False, **TINY_OPTIONS)
    assert path.is_file() and report.n_cached == 30  # every image came from the cache


def test_train_options_are_checked(tmp_path):
    data = make_dataset(tmp_path / "colors", n_per_class=4)
    with pytest.raises(graft.ConfigError, match="Unknown training option"):
        graft.train(data, out=tmp_path / "m", heads="svm")
    with pytest.raises(graft.ConfigError, match="inside the dataset"):
        graft.train(data, out=data / "model", **TINY_OPTIONS)
    assert not (data / "model").exists()


def test_image_classifier_in_scikit_learn_model_selection(tmp_path):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, cross_val_score

    paths, labels = _paths_and_labels(make_dataset(tmp_path / "colors", n_per_class=8))
    clf = graft.ImageClassifier(head="logreg", cache_dir=str(tmp_path / "cache"), **TINY_OPTIONS)
    params = clf.get_params()
    assert params["head"] == "logreg" and params["backbone"] == TINY
    assert clone(clf).get_params() == params
    assert clf.set_params(head="knn") is clf and clf.get_params()["head"] == "knn"
    clf.set_params(head="logreg")
    assert not hasattr(clf, "classes_")
    scores = cross_val_score(clf, paths, labels, cv=3)
    assert scores.mean() >= 0.8
    # Every image is in the cache now: a grid search over heads extracts nothing.
    from graft.features import open_cache

    engine = clf._engines()[0].engine
    cached = len(open_cache(engine, tmp_path / "cache"))
    search = GridSearchCV(clf, {"head": ["logreg", "knn"]}, cv=3).fit(paths, labels)
    assert search.best_params_["head"] in ("logreg", "knn")
    assert len(open_cache(engine, tmp_path / "cache")) == cached == len(paths)
    fitted = clf.fit(paths, labels)
    assert fitted is clf and list(clf.classes_) == ["blue", "green", "red"]
    assert clf.n_features_in_ == engine.num_features
    assert clf.score(paths, labels) >= 0.9
    assert set(clf.predict(paths[:3])) <= {"blue", "green", "red"}
    saved = clf.save(tmp_path / "saved")
    predictor = graft.load(saved)
    np.testing.assert_allclose(predictor.predict_proba(paths[:5]), clf.predict_proba(paths[:5]),
                               atol=1e-4)
    assert json.loads((saved / "graft.json").read_text())["labels"] == ["blue", "green", "red"]


def test_image_classifier_input_errors(tmp_path):
    clf = graft.ImageClassifier(**TINY_OPTIONS)
    with pytest.raises(graft.DataError, match="list of image paths"):
        clf.fit("one.jpg", ["a"])
    with pytest.raises(graft.DataError, match="image file paths"):
        clf.fit([np.zeros((4, 4, 3), np.uint8)] * 2, ["a", "b"])
    with pytest.raises(graft.DataError, match="two classes"):
        clf.fit(["a.jpg", "b.jpg"], ["x", "x"])
