"""Training the default head out of core: the features stay in the cache and are read a chunk at
a time, so the whole matrix never exists in memory.

``logreg`` out of core is the same model as in memory, fitted the way large training sets are
fitted anyway (:func:`graft.heads.fitting.fit_head`): C is grid-searched on a stratified sample of
at most ``MAX_SEARCH_ROWS`` rows (read into memory), then the chosen C is fitted on every row by
the same solver as in memory (:func:`graft.heads.logistic.fit_logistic`: L-BFGS in whitened
coordinates), warm-started from the sample's solution, the loss and gradient summed over chunks of
:data:`~graft.features.store.CHUNK_ROWS` rows: one pass over the cache per evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graft.catalog import STREAMING_HEADS
from graft.errors import ConfigError
from graft.features.store import CHUNK_ROWS

__all__ = ["STREAMING_HEADS", "refit_in_chunks"]


def refit_in_chunks(model: Any, X: Any, y: np.ndarray, *, chunk_rows: int = CHUNK_ROWS,
                    progress: bool = False) -> Any:
    """Fit a ``LogisticRegression`` (already fitted on a sample: its solution is the start) on
    every row of ``X`` (a :class:`graft.features.CachedFeatures` read a chunk at a time, or an
    array) by :func:`graft.heads.logistic.fit_logistic`. Sets ``coef_``, ``intercept_`` and
    ``n_iter_``.

    Raises:
        ConfigError: For a model that is not a fitted L2 logistic regression.
    """
    from sklearn.linear_model import LogisticRegression
    from tqdm.auto import tqdm

    from graft.heads.logistic import fit_logistic, solves, warn_unconverged

    if not isinstance(model, LogisticRegression) or not hasattr(model, "coef_"):
        raise ConfigError(f"Out of core, the head must be one of {', '.join(STREAMING_HEADS)}; "
                          f"got {type(model).__name__}.")
    if not solves(model):
        raise ConfigError("Out of core, the logistic regression must have the L2 penalty, an "
                          "intercept and no class weights (graft's logreg head).")
    classes = np.asarray(model.classes_)
    y = np.asarray(y)
    if len(y) != len(X) or not np.isin(y, classes).all():
        raise ConfigError("Out of core, every class must be in the sample the head started on, "
                          "and y must have one label per row.")
    outputs = 1 if len(classes) == 2 else len(classes)
    bar = tqdm(total=model.max_iter, unit="it", desc="Fitting on every row", disable=not progress,
               leave=False, dynamic_ncols=True)
    try:
        fit = fit_logistic(X, np.searchsorted(classes, y), outputs, float(model.C),
                           start=(model.coef_, model.intercept_), max_iter=model.max_iter,
                           tol=model.tol, chunk_rows=chunk_rows, callback=bar.update)
    finally:
        bar.close()
    warn_unconverged(fit)
    model.coef_, model.intercept_ = fit.W, fit.b
    model.n_iter_ = np.array([fit.iterations], dtype=np.int32)
    return model
