"""The default head's solver: scikit-learn's logistic regression, fitted in whitened coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from graft.heads import head_to_onnx, logistic, onnx_probabilities
from graft.heads.logistic import WhitenedLogisticRegression, fit_logistic


def cnn_like(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative, strongly correlated, off-centre features (like pooled CNN activations) of
    overlapping classes: the badly conditioned problems scikit-learn's L-BFGS is slow on."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(8, d)) * rng.uniform(0.05, 2.0, d)  # a few strong directions
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, 8))
    X = np.maximum((centres[y] + rng.normal(size=(n, 8))) @ mixing
                   + 0.05 * rng.normal(size=(n, d)) + 1.0, 0.0)
    return X.astype(np.float32), np.array(["ant", "bee", "cat", "dog"])[y]


def objective(model, X, y) -> float:
    """scikit-learn's objective for L-BFGS: mean cross-entropy + ||W||^2 / (2 C n)."""
    P = model.predict_proba(X.astype(np.float64))
    rows = np.searchsorted(model.classes_, y)
    return float(-np.log(P[np.arange(len(y)), rows]).mean()
                 + (model.coef_ ** 2).sum() / (2 * model.C * len(y)))


def assert_near_optimum(model, X, y) -> None:
    """About as close to the optimum (scikit-learn's, solved to tol 1e-10) as scikit-learn's own
    fit at the default tolerance gets, or closer."""
    exact = LogisticRegression(C=model.C, tol=1e-10, max_iter=50_000).fit(X.astype(np.float64), y)
    default = LogisticRegression(C=model.C, max_iter=3000).fit(X, y)
    best = objective(exact, X, y)
    assert objective(model, X, y) - best <= max(2 * (objective(default, X, y) - best), 1e-6)
    np.testing.assert_allclose(model.predict_proba(X), exact.predict_proba(X), atol=5e-3)


@pytest.mark.parametrize("classes", [2, 4])
def test_same_optimum_as_scikit_learn_in_far_fewer_iterations(classes):
    X, y = cnn_like(600, 40, classes)
    default = LogisticRegression(C=10.0, max_iter=3000).fit(X, y)
    whitened = WhitenedLogisticRegression(C=10.0, max_iter=3000).fit(X, y)
    assert whitened.coef_.shape == default.coef_.shape
    assert list(whitened.classes_) == list(default.classes_)
    assert_near_optimum(whitened, X, y)
    assert whitened.n_iter_[0] * 3 < default.n_iter_[0]
    # the ONNX graph is scikit-learn's LogisticRegression's
    np.testing.assert_allclose(onnx_probabilities(head_to_onnx(whitened, X.shape[1]), X),
                               whitened.predict_proba(X), atol=1e-5)


def test_few_rows_per_feature_fit_as_scikit_learn_does():
    X, y = cnn_like(100, 40, 3)  # under MIN_ROWS_PER_FEATURE rows per feature
    ours = WhitenedLogisticRegression(C=1.0, max_iter=3000).fit(X, y)
    theirs = LogisticRegression(C=1.0, max_iter=3000).fit(X, y)
    np.testing.assert_array_equal(ours.coef_, theirs.coef_)
    np.testing.assert_array_equal(ours.n_iter_, theirs.n_iter_)


def test_warm_start_and_chunks():
    X, y = cnn_like(500, 30, 3)
    model = WhitenedLogisticRegression(C=1.0, warm_start=True).fit(X, y)
    first = model.coef_.copy()
    assert model.fit(X, y).n_iter_[0] <= 2  # already at the optimum
    np.testing.assert_allclose(model.coef_, first, atol=1e-2)
    assert_near_optimum(model, X, y)
    chunked = fit_logistic(X, np.searchsorted(model.classes_, y), 3, 1.0, chunk_rows=7)
    assert chunked.converged  # the out-of-core path, here from memory
    model.coef_, model.intercept_ = chunked.W, chunked.b
    assert_near_optimum(model, X, y)


def test_over_the_feature_limit_the_features_are_only_centred(monkeypatch):
    X, y = cnn_like(600, 40, 2)
    monkeypatch.setattr(logistic, "MAX_WHITENED_FEATURES", 10)
    model = WhitenedLogisticRegression(C=1.0).fit(X[:5], y[:5])  # classes and shapes
    fit = fit_logistic(X, np.searchsorted(model.classes_, y), 1, 1.0)
    assert fit.converged
    model.coef_, model.intercept_ = fit.W, fit.b
    assert_near_optimum(model, X, y)


def test_settings_it_does_not_solve_are_scikit_learns():
    X, y = cnn_like(400, 20, 2)
    for settings in ({"class_weight": "balanced"}, {"C": np.inf}, {"l1_ratio": 1.0,
                                                                    "solver": "saga"}):
        ours = WhitenedLogisticRegression(max_iter=3000, random_state=0, **settings).fit(X, y)
        theirs = LogisticRegression(max_iter=3000, random_state=0, **settings).fit(X, y)
        np.testing.assert_array_equal(ours.coef_, theirs.coef_)
    with pytest.raises(ValueError, match="at least 2 classes"):
        WhitenedLogisticRegression().fit(X, np.full(len(y), "ant"))
    with pytest.raises(ValueError, match="'C' parameter"):
        WhitenedLogisticRegression(C=-1.0).fit(X, y)


def test_a_tight_tolerance_is_met():
    X, y = cnn_like(600, 40, 4)
    index = np.searchsorted(np.unique(y), y)
    fit = fit_logistic(X, index, 4, 10.0, tol=1e-7)  # below float32's reach: float64 products
    gradient = logistic._loss_and_gradient(X, index, 4, 10.0, 1 << 20, np.float64)(fit.W, fit.b)
    assert fit.converged and max(np.abs(gradient[1]).max(), np.abs(gradient[2]).max()) <= 1e-7


def test_the_final_fit_over_many_rows_keeps_class_weights():
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from graft.heads import fit_head

    X, y = cnn_like(900, 20, 2)
    y = np.where(np.arange(len(y)) % 10 == 0, "ant", "bee")  # a rare class
    search = GridSearchCV(LogisticRegression(class_weight="balanced", max_iter=3000),
                          {"C": [1.0]}, cv=StratifiedKFold(3))
    fitted, _ = fit_head(search, X, y, max_search_rows=300)  # final fit on all 900 rows
    expected = LogisticRegression(class_weight="balanced", max_iter=3000).fit(X, y)
    np.testing.assert_allclose(fitted.predict_proba(X), expected.predict_proba(X), atol=1e-6)
