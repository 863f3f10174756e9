"""Fitting heads fast and visibly: deliberate thread pools, timing, and a progress bar.

A head on cached features is small matrix work. With BLAS's default of one thread per core, the
threads of a few-hundred-row product fight each other (and anything else on the machine) for the
cores, so BLAS runs single-threaded and the grid's fits run in parallel threads instead (same
fits, same result; ``benchmarks/head_speed.py --before`` fits with the library defaults).

Large grid searches run their fits in forked processes: SciPy's L-BFGS-B step (about a third of
a logistic-regression fit) holds the GIL, so two threads wait on each other. Small ones stay in
threads, where starting processes would cost more than it saves.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from graft.errors import ConfigError
from graft.system import available_cpus

__all__ = ["fit_head", "fitting_threads"]

# Samples x features x classes above which a grid search's fits go to processes (flowers17,
# 2.4e7, gains nothing from processes; 102 classes x 2,040 x 1,280, 2.7e8, gains a second).
_PROCESS_WORK = 1e8

# Above this many training rows a grid search runs on a stratified sample of this size, and only
# the final fit sees every row: 15 cross-validation fits on 100,000 rows would take an hour.
MAX_SEARCH_ROWS = 10_000

# Fits done by the running grid search, ticked by its scorer in this process or a forked worker.
_TICKS: Any = None


@contextlib.contextmanager
def fitting_threads(cpus: int | None = None, *, backend: str = "threading") -> Iterator[None]:
    """BLAS single-threaded, and scikit-learn's parallel loops (grid-search and CV folds, forest
    trees) in ``cpus`` workers (threads, or forked processes with ``backend="multiprocessing"``),
    for the duration of the block."""
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"), \
            parallel_config(backend=backend, n_jobs=cpus or available_cpus()):
        yield


class _ProgressScorer:
    """Accuracy, like a classifier's default scorer, counting its calls in ``_TICKS`` (shared
    memory, so fits in forked workers count too)."""

    def __call__(self, estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
        if _TICKS is not None:
            with _TICKS.get_lock():
                _TICKS.value += 1
        return float(np.mean(estimator.predict(X) == y))


def _grid_size(estimator: Any) -> int:
    grid = estimator.param_grid
    grids = grid if isinstance(grid, list) else [grid]
    return sum(int(np.prod([len(v) for v in g.values()])) for g in grids) * estimator.cv.n_splits


def _backend(X: np.ndarray, y: np.ndarray, cpus: int) -> str:
    """Forked processes for a large grid where fork is the safe default (Linux), else threads."""
    work = X.shape[0] * X.shape[1] * max(2, len(np.unique(y)))
    if cpus > 1 and work >= _PROCESS_WORK and sys.platform.startswith("linux"):
        return "multiprocessing"
    return "threading"


@contextlib.contextmanager
def _counting(bar: Any) -> Iterator[None]:
    """Share a fit counter with the scorer and move ``bar`` along with it until the block ends."""
    global _TICKS
    _TICKS = multiprocessing.get_context().Value("i", 0)
    done = threading.Event()

    def follow() -> None:
        shown, finished = 0, False
        while not finished:
            finished = done.wait(0.1)
            count = _TICKS.value
            if count > shown:
                bar.update(count - shown)
                shown = count

    watcher = threading.Thread(target=follow, name="graft-fit-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        _TICKS = None


def search_sample(y: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """Indices of a stratified sample of about ``rows`` labels (every class keeps at least
    min(its count, 3) rows), sorted."""
    rng = np.random.default_rng(seed)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    share = rows / len(y)
    chosen = []
    for index, count in enumerate(counts):
        members = np.flatnonzero(inverse == index)
        take = min(count, max(3, round(count * share)))
        chosen.append(rng.choice(members, take, replace=False))
    return np.sort(np.concatenate(chosen))


def fit_head(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, *,
             name: str = "head", progress: bool = False,
             cpus: int | None = None,
             max_search_rows: int | None = MAX_SEARCH_ROWS) -> tuple[BaseEstimator, float]:
    """Fit ``estimator`` under :func:`fitting_threads`; return it and the seconds it took.

    ``X`` left in the cache (a :class:`graft.features.CachedFeatures`) is fitted out of core: the
    search on a sample read into memory, the final fit over every row a chunk at a time
    (:func:`graft.heads.streaming.refit_in_chunks`).

    A grid search shows a progress bar (one step per cross-validation fit) when ``progress``,
    and runs its fits in processes when they are many and large (see the module's notes). Over
    ``max_search_rows`` training rows, it searches on a stratified sample of that many and refits
    the chosen hyper-parameters on every row (``search_rows_`` records the sample's size).
    """
    from tqdm.auto import tqdm

    cpus = cpus or available_cpus()
    search = hasattr(estimator, "param_grid") and hasattr(estimator, "cv")
    if not isinstance(X, np.ndarray):  # features left in the cache: out of core, in chunks
        if not search:
            from graft.catalog import STREAMING_HEADS

            raise ConfigError(f"Out of core, the head must be one of "
                              f"{', '.join(STREAMING_HEADS)}; got {type(estimator).__name__}.")
        return _fit_search_on_sample(estimator, X, y, name=name, progress=progress, cpus=cpus,
                                     rows=min(max_search_rows or MAX_SEARCH_ROWS, len(y)))
    if search and max_search_rows and len(y) > max_search_rows:
        return _fit_search_on_sample(estimator, X, y, name=name, progress=progress, cpus=cpus,
                                     rows=max_search_rows)
    bar = tqdm(total=_grid_size(estimator) if search else None, unit="fit",
               desc=f"Fitting {name}", disable=not (progress and search), leave=False,
               dynamic_ncols=True)
    backend = _backend(X, y, cpus) if search else "threading"
    if search:
        estimator.set_params(scoring=_ProgressScorer())
    start = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            if search and progress:
                stack.enter_context(_counting(bar))
            stack.enter_context(fitting_threads(cpus, backend=backend))
            estimator.fit(X, y)
    finally:
        bar.close()
        if search:  # the fitted search keeps no callback
            from sklearn.metrics import check_scoring

            estimator.set_params(scoring=None)
            if hasattr(estimator, "scorer_"):
                estimator.scorer_ = check_scoring(estimator.estimator)
    return estimator, time.perf_counter() - start


def _fit_search_on_sample(estimator: Any, X: np.ndarray, y: np.ndarray, *, name: str,
                          progress: bool, cpus: int, rows: int) -> tuple[BaseEstimator, float]:
    from sklearn.base import clone

    from graft.heads.logistic import solves

    start = time.perf_counter()
    sample = search_sample(y, rows)
    in_memory = isinstance(X, np.ndarray)
    X_sample = X[sample] if in_memory else X[sample].rows()  # out of core: read the sample
    y_sample = y[sample]
    estimator.set_params(refit=False)
    fit_head(estimator, X_sample, y_sample, name=f"{name} (search on {len(sample):,} rows)",
             progress=progress, cpus=cpus, max_search_rows=None)
    final = clone(estimator.estimator).set_params(**estimator.best_params_)
    with fitting_threads(cpus):
        if in_memory and not solves(final):  # e.g. class weights: scikit-learn's own fit
            final.fit(X, y)
        else:  # from the sample's solution, over every row a chunk at a time (in memory or not)
            from graft.heads.streaming import refit_in_chunks

            final.fit(X_sample, y_sample)
            refit_in_chunks(final, X, y, progress=progress)
    estimator.best_estimator_ = final  # what the search's predict and predict_proba use
    estimator.set_params(refit=True)
    estimator.search_rows_ = len(sample)
    return estimator, time.perf_counter() - start
