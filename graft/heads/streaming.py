"""Training the default head out of core: the features stay in the cache and are read a chunk at
a time, so the whole matrix never exists in memory.

``logreg`` out of core is the same model as in memory, fitted the way large training sets are
fitted anyway (:func:`graft.heads.fitting.fit_head`): C is grid-searched on a stratified sample of
at most ``MAX_SEARCH_ROWS`` rows (read into memory), then the chosen C is fitted on every row by
L-BFGS, warm-started from the sample's solution, with scikit-learn's objective (mean
cross-entropy plus ``||W||^2 / (2 C n)``) and stopping rule (its ``gtol`` and ``ftol``), the loss
and gradient summed over chunks of
:data:`~graft.features.store.CHUNK_ROWS` rows: one pass over the cache per evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graft.catalog import STREAMING_HEADS
from graft.errors import ConfigError
from graft.features.store import CHUNK_ROWS, chunk_bounds, read_rows

__all__ = ["STREAMING_HEADS", "refit_out_of_core"]



def _objective(X: Any, y: np.ndarray, binary: bool, n_features: int, C: float,
               chunk_rows: int):
    """Loss and gradient of L2-regularized logistic regression over X read in chunks."""
    n = len(y)
    outputs = 1 if binary else int(y.max()) + 1
    bounds = chunk_bounds(n, chunk_rows)

    def function(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W = theta[: outputs * n_features].reshape(outputs, n_features)
        b = theta[outputs * n_features:]
        loss, grad_W, grad_b = 0.0, np.zeros_like(W), np.zeros_like(b)
        for start, stop in bounds:
            rows = read_rows(X, start, stop).astype(np.float64)
            z = rows @ W.T + b
            labels = y[start:stop]
            if binary:
                z = z[:, 0]
                sign = np.where(labels == 1, 1.0, -1.0)
                loss += float(np.logaddexp(0.0, -sign * z).sum())
                g = (1.0 / (1.0 + np.exp(-z)) - (labels == 1))[:, None]
            else:
                top = z.max(axis=1, keepdims=True)
                log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
                loss += float((log_norm - z[np.arange(len(labels)), labels]).sum())
                g = np.exp(z - log_norm[:, None])
                g[np.arange(len(labels)), labels] -= 1.0
            grad_W += g.T @ rows
            grad_b += g.sum(axis=0)
        loss = loss / n + float((W * W).sum()) / (2.0 * C * n)
        grad_W = grad_W / n + W / (C * n)
        return loss, np.concatenate([grad_W.ravel(), grad_b / n])

    return function


def refit_out_of_core(model: Any, X: Any, y: np.ndarray, *, chunk_rows: int = CHUNK_ROWS,
                      progress: bool = False) -> Any:
    """Fit a ``LogisticRegression`` (already fitted on a sample: its solution is the start) on
    every row of ``X`` (a :class:`graft.features.CachedFeatures`, or any array) by L-BFGS with
    the loss and gradient summed over chunks. Sets ``coef_``, ``intercept_`` and ``n_iter_``.

    Raises:
        ConfigError: For a model that is not a fitted L2 logistic regression.
    """
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression
    from tqdm.auto import tqdm

    if not isinstance(model, LogisticRegression) or not hasattr(model, "coef_"):
        raise ConfigError(f"Out of core, the head must be one of {', '.join(STREAMING_HEADS)}; "
                          f"got {type(model).__name__}.")
    classes = np.asarray(model.classes_)
    y = np.asarray(y)
    if len(y) != len(X) or not np.isin(y, classes).all():
        raise ConfigError("Out of core, every class must be in the sample the head started on, "
                          "and y must have one label per row.")
    y_index = np.searchsorted(classes, y)
    binary = len(classes) == 2
    theta = np.concatenate([np.asarray(model.coef_, np.float64).ravel(),
                            np.asarray(model.intercept_, np.float64)])
    function = _objective(X, y_index, binary, X.shape[1], float(model.C), chunk_rows)
    bar = tqdm(total=model.max_iter, unit="it", desc="Fitting on every row, out of core",
               disable=not progress, leave=False, dynamic_ncols=True)
    try:
        result = minimize(function, theta, jac=True, method="L-BFGS-B",
                          callback=lambda _: bar.update(),
                          options={"maxiter": model.max_iter, "gtol": model.tol,
                                   "ftol": 64 * np.finfo(float).eps, "maxls": 50})
    finally:
        bar.close()
    if not result.success:  # as scikit-learn says for its own L-BFGS fits
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"Out-of-core L-BFGS did not converge in {result.nit} iterations "
                      f"({result.message}).", ConvergenceWarning, stacklevel=2)
    outputs = 1 if binary else len(classes)
    model.coef_ = result.x[: outputs * X.shape[1]].reshape(outputs, X.shape[1])
    model.intercept_ = result.x[outputs * X.shape[1]:]
    model.n_iter_ = np.array([result.nit], dtype=np.int32)
    return model
