"""The head registry: classifiers trained on cached features, all scikit-learn estimators."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from graft.catalog import DEFAULT_HEAD, HEAD_DESCRIPTIONS
from graft.errors import ConfigError
from graft.heads.logistic import WhitenedLogisticRegression

__all__ = [
    "DEFAULT_HEAD",
    "HEADS",
    "check_head_scales",
    "create_head",
    "describe_head",
    "final_estimator",
    "list_heads",
    "select_head",
]



def _cv(n_splits: int, y: np.ndarray | None, seed: int) -> StratifiedKFold:
    if y is not None:
        n_splits = max(2, min(n_splits, int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    return StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def _logreg(seed: int, y: np.ndarray | None = None) -> BaseEstimator:
    # Grid-searched C, 3-fold CV, on the raw features (standardizing CNN features scored lower).
    # scikit-learn's default tolerance stays: a looser one picked another C on flowers17 and
    # hymenoptera.
    # scikit-learn's model, fitted in whitened coordinates where that pays (graft.heads.logistic;
    # benchmarks/logreg_solver.py).
    return GridSearchCV(
        WhitenedLogisticRegression(max_iter=3000),
        {"C": [0.01, 0.1, 1.0, 10.0, 100.0]},
        cv=_cv(3, y, seed),
        n_jobs=None,
    )


def _linear_svm(seed: int, y: np.ndarray | None = None) -> BaseEstimator:
    return make_pipeline(
        StandardScaler(),
        CalibratedClassifierCV(LinearSVC(C=0.01, dual="auto", random_state=seed, max_iter=5000),
                               cv=_cv(3, y, seed)),
    )


def _svm(seed: int, y: np.ndarray | None = None) -> BaseEstimator:
    # SVC(probability=True) is deprecated in scikit-learn 1.9: calibrate explicitly.
    return make_pipeline(
        StandardScaler(),
        CalibratedClassifierCV(SVC(kernel="rbf", C=10.0, random_state=seed), cv=_cv(3, y, seed),
                               ensemble=False),
    )


def _torch_head(name: str, seed: int) -> BaseEstimator:
    from graft.heads import torch_heads  # torch is imported only for the PyTorch heads

    return getattr(torch_heads, name)(random_state=seed)


# The factories; names and descriptions are listed in graft.catalog (lean, for the CLI).
_FACTORIES: dict[str, Callable[..., BaseEstimator]] = {
    "logreg": _logreg,
    "linear-svm": _linear_svm,
    "svm": _svm,
    "random-forest": lambda seed, y=None: RandomForestClassifier(n_estimators=300, n_jobs=-1,
                                                                 random_state=seed),
    "naive-bayes": lambda seed, y=None: GaussianNB(),
    "knn": lambda seed, y=None: make_pipeline(StandardScaler(),
                                              KNeighborsClassifier(n_neighbors=5)),
    "softmax": lambda seed, y=None: _torch_head("TorchSoftmaxClassifier", seed),
    "mlp": lambda seed, y=None: _torch_head("TorchMLPClassifier", seed),
}
HEADS: dict[str, tuple[str, Callable[..., BaseEstimator]]] = {
    name: (HEAD_DESCRIPTIONS[name], factory) for name, factory in _FACTORIES.items()
}

# Candidates for --head auto: the heads that are both strong and quick on CNN features.
# Not linear-svm: its one-vs-rest fits are slow with many classes and score below logreg on
# every set benchmarks/head_speed.py measures.
_AUTO_CANDIDATES = ("logreg", "svm", "knn", "softmax")


# Heads whose time or memory grows with the square of the training rows, and their limit.
QUADRATIC_HEADS = ("svm", "knn", "auto")
QUADRATIC_LIMIT = 50_000


def check_head_scales(name: str, n_rows: int) -> None:
    """Refuse a head that cannot fit ``n_rows`` training rows in reasonable time and memory."""
    if name in QUADRATIC_HEADS and n_rows > QUADRATIC_LIMIT:
        raise ConfigError(
            f"The {name!r} head grows with the square of the training images: {n_rows:,} is over "
            f"its limit of {QUADRATIC_LIMIT:,}. Use 'logreg' (the default, which also trains out "
            f"of core: out_of_core), 'softmax' or 'mlp', which grow linearly.",
            parameter="out_of_core")


def list_heads() -> dict[str, str]:
    """``{name: description}`` of every head, plus ``auto``."""
    return dict(HEAD_DESCRIPTIONS)


def create_head(name: str, *, random_state: int = 0, y: np.ndarray | None = None) -> BaseEstimator:
    """A fresh, unfitted head by name (``y`` lets CV folds adapt to tiny classes)."""
    if name not in HEADS:
        close = difflib.get_close_matches(name, list(HEADS) + ["auto"], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown head {name!r}.{hint} Expected one of: {', '.join(list_heads())}."
        )
    return HEADS[name][1](random_state, y)


def select_head(
    X: np.ndarray, y: np.ndarray, *, random_state: int = 0,
    candidates: tuple[str, ...] = _AUTO_CANDIDATES, cv: int = 3, cpus: int | None = None,
) -> tuple[str, dict[str, dict[str, float]]]:
    """Pick a head by mean cross-validated accuracy on (X, y).

    Returns:
        The best head's name, and for every candidate ``{"cv_accuracy", "seconds"}`` (the time
        its cross-validation took).
    """
    from graft.heads.fitting import fitting_threads

    folds = _cv(cv, y, random_state)
    results: dict[str, dict[str, float]] = {}
    for name in candidates:
        estimator = create_head(name, random_state=random_state, y=y)
        start = time.perf_counter()
        with fitting_threads(cpus):
            score = float(np.mean(cross_val_score(clone(estimator), X, y, cv=folds)))
        results[name] = {"cv_accuracy": score, "seconds": time.perf_counter() - start}
    best = max(results, key=lambda k: (results[k]["cv_accuracy"], -candidates.index(k)))
    return best, results


def final_estimator(estimator: BaseEstimator) -> BaseEstimator:
    """The fitted estimator that predicts (the refit best estimator of a grid search)."""
    return getattr(estimator, "best_estimator_", estimator)


def describe_head(estimator: BaseEstimator) -> dict[str, Any]:
    """JSON-ready description: class, hyper-parameters and grid-search results, if any."""
    final = final_estimator(estimator)
    params = {k: v for k, v in final.get_params(deep=True).items()
              if not isinstance(v, (BaseEstimator, list))}
    info: dict[str, Any] = {"class": type(final).__name__, "params": _jsonable(params)}
    if hasattr(estimator, "search_rows_"):
        info["search_rows"] = int(estimator.search_rows_)
    if hasattr(estimator, "best_params_"):
        info["best_params"] = _jsonable(estimator.best_params_)
        info["cv_best_score"] = float(estimator.best_score_)
        results = estimator.cv_results_
        info["cv_results"] = [
            {"params": _jsonable(p), "mean_test_score": float(m), "std_test_score": float(s)}
            for p, m, s in zip(results["params"], results["mean_test_score"],
                               results["std_test_score"])
        ]
    return info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
