"""Heads: scikit-learn contract, learning, ONNX parity, automatic selection."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError

from graft.errors import ConfigError
from graft.heads import (
    HEADS,
    TorchSoftmaxClassifier,
    create_head,
    describe_head,
    head_to_onnx,
    onnx_probabilities,
    select_head,
)


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(n_samples=240, n_features=24, n_informative=8, n_classes=3,
                               class_sep=2.0, random_state=0)
    X = X.astype(np.float32)
    return X[:180], y[:180], X[180:], y[180:]


@pytest.mark.parametrize("name", list(HEADS))
def test_head_learns_and_exports_to_onnx(name, data):
    X_train, y_train, X_test, y_test = data
    head = create_head(name, y=y_train)
    clone(head)  # the estimator contract: parameters only in __init__
    head.fit(X_train, y_train)
    assert head.score(X_test, y_test) > 0.75
    probabilities = head.predict_proba(X_test)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    onnx_probs = onnx_probabilities(head_to_onnx(head, X_train.shape[1]), X_test)
    np.testing.assert_allclose(onnx_probs, probabilities, atol=1e-4)
    info = describe_head(head)
    assert info["class"] and isinstance(info["params"], dict)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_svm_head_fits_and_exports_without_future_warnings(n_classes):
    # Every --head svm user would see scikit-learn's deprecation warnings otherwise.
    X, y = make_classification(n_samples=90, n_features=12, n_informative=6, n_classes=n_classes,
                               random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        head = create_head("svm", y=y).fit(X, y)
        head_to_onnx(head, X.shape[1])


def test_logreg_records_grid_search(data):
    X_train, y_train, _, _ = data
    info = describe_head(create_head("logreg", y=y_train).fit(X_train, y_train))
    assert "C" in info["best_params"]
    assert len(info["cv_results"]) == 5


def test_torch_head_contract(data):
    X_train, y_train, _, _ = data
    head = TorchSoftmaxClassifier(epochs=5)
    with pytest.raises(NotFittedError):
        head.predict(X_train)
    head.fit(X_train, y_train)
    assert head.loss_curve_[-1] < head.loss_curve_[0]
    assert clone(head).get_params()["epochs"] == 5
    with pytest.raises(ConfigError, match="'epochs' parameter of TorchSoftmaxClassifier"):
        TorchSoftmaxClassifier(epochs=0).fit(X_train, y_train)


def test_unknown_head_and_auto(data):
    with pytest.raises(ConfigError, match="Did you mean logreg"):
        create_head("logreq")
    X_train, y_train, _, _ = data
    best, tried = select_head(X_train, y_train, candidates=("logreg", "knn", "naive-bayes"))
    assert set(tried) == {"logreg", "knn", "naive-bayes"}
    accuracy = {name: result["cv_accuracy"] for name, result in tried.items()}
    assert accuracy[best] == max(accuracy.values())
    assert all(result["seconds"] > 0 for result in tried.values())


def test_fit_head_shows_progress_and_returns_the_same_fit(data, capsys):
    from graft.heads import fit_head

    X_train, y_train, X_test, _ = data
    plain = create_head("logreg", y=y_train).fit(X_train, y_train)
    fitted, seconds = fit_head(create_head("logreg", y=y_train), X_train, y_train,
                               name="logreg", progress=True)
    assert seconds > 0 and fitted.best_params_ == plain.best_params_
    np.testing.assert_allclose(fitted.predict_proba(X_test), plain.predict_proba(X_test),
                               atol=1e-6)
    assert fitted.get_params()["scoring"] is None  # no callback left in the fitted search
    assert "Fitting logreg" in capsys.readouterr().err


def test_a_fitted_search_pickles(data):
    import pickle

    from graft.heads import fit_head

    X_train, y_train, X_test, _ = data
    fitted, _ = fit_head(create_head("logreg", y=y_train), X_train, y_train, progress=True)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict(X_test), fitted.predict(X_test))
    assert restored.score(X_test, fitted.predict(X_test)) == 1.0


def test_a_large_grid_fits_in_processes_with_the_same_result(data, monkeypatch, capsys):
    from graft.heads import fit_head, fitting

    X_train, y_train, X_test, _ = data
    threaded, _ = fit_head(create_head("logreg", y=y_train), X_train, y_train)
    monkeypatch.setattr(fitting, "_PROCESS_WORK", 0)  # this small grid counts as large
    assert fitting._backend(X_train, y_train, cpus=2) == "multiprocessing"
    forked, _ = fit_head(create_head("logreg", y=y_train), X_train, y_train, cpus=2,
                         name="logreg", progress=True)
    assert forked.best_params_ == threaded.best_params_
    np.testing.assert_array_equal(forked.predict_proba(X_test), threaded.predict_proba(X_test))
    assert "Fitting logreg" in capsys.readouterr().err and fitting._TICKS is None


def test_a_large_training_set_searches_on_a_sample_and_refits_on_all():
    from graft.heads import describe_head, final_estimator, fit_head
    from graft.heads.fitting import search_sample

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16))
    y = rng.integers(0, 4, 3000)
    X = (centers[y] + rng.normal(scale=2.0, size=(3000, 16))).astype(np.float32)
    sample = search_sample(y, 600)
    assert 550 <= len(sample) <= 650 and set(np.unique(y[sample])) == {0, 1, 2, 3}
    fitted, _ = fit_head(create_head("logreg", y=y), X, y, max_search_rows=600)
    final = final_estimator(fitted)
    assert fitted.search_rows_ == len(sample) and final.C == fitted.best_params_["C"]
    # the final head saw every row: it is a fit at the chosen C on all of them (warm-started
    # from the sample's, so equal to a cold fit up to the solver's tolerance)
    assert not final.warm_start
    plain = type(final)(**final.get_params()).fit(X, y)
    np.testing.assert_allclose(fitted.predict_proba(X), plain.predict_proba(X), atol=2e-3)
    assert np.mean(fitted.predict(X) == plain.predict(X)) > 0.995
    assert describe_head(fitted)["search_rows"] == len(sample)


def test_quadratic_heads_refuse_very_large_training_sets():
    from graft.errors import ConfigError
    from graft.heads import check_head_scales

    check_head_scales("svm", 50_000)
    check_head_scales("logreg", 10_000_000)
    for name in ("svm", "knn", "auto"):
        with pytest.raises(ConfigError, match="'logreg'.*'softmax'"):
            check_head_scales(name, 50_001)
