"""Fitting heads fast and visibly: deliberate thread pools, timing, and a progress bar.

A head on cached features is small matrix work. With BLAS's default of one thread per core, the
threads of a few-hundred-row product fight each other (and anything else on the machine) for two
cores: the default ``logreg`` grid search on flowers17 took 13.8 s that way and 2.2 s with BLAS
single-threaded and the grid's fits run in parallel threads instead (same fits, same result).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from graft.inference.threads import available_cpus

__all__ = ["fit_head", "fitting_threads"]


@contextlib.contextmanager
def fitting_threads(cpus: int | None = None) -> Iterator[None]:
    """BLAS single-threaded, and scikit-learn's parallel loops (grid-search and CV folds, forest
    trees) in ``cpus`` threads, for the duration of the block."""
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), \
            parallel_config(backend="threading", n_jobs=cpus or available_cpus()):
        yield


class _ProgressScorer:
    """Accuracy, like a classifier's default scorer, ticking a progress callback per fit."""

    def __init__(self, tick: Callable[[], None]) -> None:
        self.tick = tick

    def __call__(self, estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
        self.tick()
        return float(np.mean(estimator.predict(X) == y))


def _grid_size(estimator: Any) -> int:
    grid = estimator.param_grid
    grids = grid if isinstance(grid, list) else [grid]
    return sum(int(np.prod([len(v) for v in g.values()])) for g in grids) * estimator.cv.n_splits


def fit_head(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, *,
             name: str = "head", progress: bool = False,
             cpus: int | None = None) -> tuple[BaseEstimator, float]:
    """Fit ``estimator`` under :func:`fitting_threads`; return it and the seconds it took.

    A grid search shows a progress bar (one step per cross-validation fit) when ``progress``.
    """
    from tqdm.auto import tqdm

    search = hasattr(estimator, "param_grid") and hasattr(estimator, "cv")
    bar = tqdm(total=_grid_size(estimator) if search else None, unit="fit",
               desc=f"Fitting {name}", disable=not (progress and search), leave=False,
               dynamic_ncols=True)
    if search:
        estimator.set_params(scoring=_ProgressScorer(lambda: bar.update(1)))
    start = time.perf_counter()
    try:
        with fitting_threads(cpus):
            estimator.fit(X, y)
    finally:
        bar.close()
        if search:  # the fitted search keeps no callback (and stays picklable)
            from sklearn.metrics import check_scoring

            estimator.set_params(scoring=None)
            if hasattr(estimator, "scorer_"):
                estimator.scorer_ = check_scoring(estimator.estimator)
    return estimator, time.perf_counter() - start
