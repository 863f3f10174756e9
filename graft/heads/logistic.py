"""The default head's model fitted fast: scikit-learn's logistic regression, solved by L-BFGS in
whitened coordinates.

The ``logreg`` head is scikit-learn's L2-regularized multinomial logistic regression, and stays
exactly that: the same loss (mean cross-entropy), the same penalty (``||W||^2 / (2 C n)``, the
intercept unpenalized), so the same optimum (``coef_``, ``intercept_`` and ``predict_proba`` equal
to the solvers' tolerance), and the same ONNX graph. Only the way to the optimum changes.

On CNN features scikit-learn's L-BFGS is slow to get there: the features are non-negative
(post-ReLU averages) and strongly correlated, so the Hessian ``X^T D X / n`` is badly conditioned
and a fit takes thousands of iterations. Here the weights are written ``W = V P`` and
``b = c - W mu``, with ``mu`` the features' mean and ``P = (Sigma + lambda I)^(-1/2)`` from their
covariance ``Sigma``: in ``(V, c)`` the data term's Hessian is close to the identity
(``lambda = 4 / (C n)`` matches the penalty's curvature to the softmax's at most 1/4). The same
fits take several times fewer iterations, stop by scikit-learn's rule, and end closer to the
optimum (``benchmarks/logreg_solver.py``). ``mu`` and ``Sigma`` are estimated from at most
:data:`PRECONDITION_ROWS` evenly spaced rows: any ``P`` gives the same optimum, a rough one just
more iterations.

:class:`WhitenedLogisticRegression` leaves the fit to scikit-learn (exactly its results) where
whitening would not pay, with fewer than :data:`MIN_ROWS_PER_FEATURE` rows per feature (small
datasets, where scikit-learn needs few iterations) or over :data:`MAX_WHITENED_FEATURES`
features, and for settings this solver does not fit (:func:`solves`: class weights, other
penalties, ``C=inf``). The final fit over every row of a large training set
(:func:`graft.heads.streaming.refit_in_chunks`) always uses this solver; over
:data:`MAX_WHITENED_FEATURES` features it only centres them.

The loss and gradient are summed over chunks of rows (float32 products, float64 sums), so the same
solver fits an in-memory matrix and, out of core, features read from the cache a chunk at a time
(:func:`graft.heads.streaming.refit_in_chunks`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from graft.features.store import CHUNK_ROWS, chunk_bounds, read_rows

__all__ = [
    "FLOAT32_TOL",
    "MAX_WHITENED_FEATURES",
    "MIN_ROWS_PER_FEATURE",
    "PRECONDITION_ROWS",
    "LogisticFit",
    "WhitenedLogisticRegression",
    "fit_logistic",
    "register_onnx_converter",
    "solves",
    "warn_unconverged",
]

# Rows the preconditioner's mean and covariance are estimated from, at most: more rows give a
# closer P and fewer iterations.
PRECONDITION_ROWS = 100_000

# The smallest tol float32 products reach (below it the loss's rounding stops L-BFGS first);
# tighter ones compute in float64.
FLOAT32_TOL = 1e-5

# Whitening pays where the rows far outnumber the features: each evaluation's cost grows by about
# features / rows, and the covariance and its eigendecomposition cost a few evaluations more.
# Below this many rows per feature scikit-learn's own L-BFGS fits: it needs few iterations there
# and whitening is slower (the small sets of benchmarks/head_speed.py).
MIN_ROWS_PER_FEATURE = 4
# Above this many features the d x d covariance is too large to decompose (VGG-16's pool5 has
# 25,088): the features are only centred.
MAX_WHITENED_FEATURES = 4096


@dataclass(frozen=True)
class _Whitening:
    """``P = U diag(scale) U^T + (I - U U^T) / sqrt(lambda)`` (symmetric), and the mean ``mu``;
    ``U`` holds the covariance's eigenvectors as columns (fewer than the features when estimated
    from fewer rows than features; the rest of the space has variance 0)."""

    mu: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    rest: float

    @classmethod
    def centring(cls, mu: np.ndarray) -> _Whitening:
        """Only ``mu`` subtracted (``P`` the identity)."""
        return cls(mu, np.zeros((len(mu), 0)), np.zeros(0), 1.0)

    @classmethod
    def from_covariance(cls, mu: np.ndarray, covariance: np.ndarray, lam: float) -> _Whitening:
        values, basis = np.linalg.eigh(covariance)
        return cls._make(mu, basis, values, lam)

    @classmethod
    def from_rows(cls, rows: np.ndarray, lam: float) -> _Whitening:
        """From fewer rows than features: the eigenvectors of ``X^T X`` from those of the smaller
        ``X X^T``."""
        rows = np.asarray(rows, dtype=np.float64)
        mu = rows.mean(axis=0)
        centred = rows - mu
        values, vectors = np.linalg.eigh(centred @ centred.T / len(rows))
        keep = values > values.max(initial=0.0) * 1e-10
        values, vectors = values[keep], vectors[:, keep]
        return cls._make(mu, centred.T @ vectors / np.sqrt(len(rows) * values), values, lam)

    @classmethod
    def _make(cls, mu: np.ndarray, basis: np.ndarray, values: np.ndarray,
              lam: float) -> _Whitening:
        return cls(mu, basis, 1.0 / np.sqrt(np.maximum(values, 0.0) + lam), 1.0 / np.sqrt(lam))

    def apply(self, M: np.ndarray) -> np.ndarray:
        """``M P`` for a matrix of row vectors (``P`` is symmetric)."""
        return self._scaled(M, self.scale, self.rest)

    def unapply(self, M: np.ndarray) -> np.ndarray:
        """``M P^-1``."""
        return self._scaled(M, 1.0 / self.scale, 1.0 / self.rest)

    def _scaled(self, M: np.ndarray, scale: np.ndarray, rest: float) -> np.ndarray:
        """``M (U diag(scale) U^T + (I - U U^T) rest)``."""
        projected = M @ self.basis
        return (projected * scale) @ self.basis.T + (M - projected @ self.basis.T) * rest


def _loss_and_gradient(X: Any, y: np.ndarray, outputs: int, C: float, chunk_rows: int,
                       dtype: type = np.float32
                       ) -> Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray, np.ndarray]]:
    """scikit-learn's objective (mean cross-entropy + ``||W||^2 / (2 C n)``) and its gradient in
    ``(W, b)``, over X read a chunk at a time, the products in ``dtype``."""
    n = len(y)
    bounds = chunk_bounds(n, chunk_rows)

    def function(W: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        weights = np.ascontiguousarray(W.T, dtype=dtype)
        loss, grad_W, grad_b = 0.0, np.zeros_like(W), np.zeros_like(b)
        for start, stop in bounds:
            rows = read_rows(X, start, stop).astype(dtype, copy=False)
            z = (rows @ weights).astype(np.float64) + b
            labels = y[start:stop]
            if outputs == 1:  # binary: one row of weights, the sigmoid
                z = z[:, 0]
                sign = np.where(labels == 1, 1.0, -1.0)
                loss += float(np.logaddexp(0.0, -sign * z).sum())
                g = (0.5 * (1.0 + np.tanh(0.5 * z)) - (labels == 1))[:, None]
            else:
                top = z.max(axis=1, keepdims=True)
                log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
                loss += float((log_norm - z[np.arange(len(labels)), labels]).sum())
                g = np.exp(z - log_norm[:, None])
                g[np.arange(len(labels)), labels] -= 1.0
            grad_W += g.T.astype(dtype) @ rows
            grad_b += g.sum(axis=0)
        loss = loss / n + float((W * W).sum()) / (2.0 * C * n)
        return loss, grad_W / n + W / (C * n), grad_b / n

    return function


def _whitening(X: Any, lam: float, chunk_rows: int) -> _Whitening:
    """The whitening of X's rows: from every row when they are fewer than the features; else
    from at most :data:`PRECONDITION_ROWS` evenly spaced rows, their covariance summed over
    chunks (float32 products of rows centred on the first chunk's mean, float64 sums)."""
    n, d = X.shape
    if d > MAX_WHITENED_FEATURES:
        return _Whitening.centring(read_rows(X, 0, min(n, chunk_rows)).mean(axis=0, dtype=np.float64))
    if n <= d:  # at most d x d values, read a chunk at a time as always
        return _Whitening.from_rows(
            np.concatenate([read_rows(X, *bounds) for bounds in chunk_bounds(n, chunk_rows)]), lam)
    stride = -(-n // PRECONDITION_ROWS)
    count, shift, total, products = 0, None, np.zeros(d), np.zeros((d, d))
    for start, stop in chunk_bounds(n, chunk_rows):
        rows = read_rows(X, start, stop)[(-start) % stride::stride]
        if shift is None:
            shift = rows.mean(axis=0, dtype=np.float64).astype(np.float32)
        rows = rows - shift
        count += len(rows)
        total += rows.sum(axis=0, dtype=np.float64)
        products += rows.T @ rows
    delta = total / count
    covariance = products / count - np.outer(delta, delta)
    return _Whitening.from_covariance(shift + delta, covariance, lam)


@dataclass(frozen=True)
class LogisticFit:
    """What :func:`fit_logistic` found: weights (outputs, d), intercepts (outputs,), the L-BFGS
    iterations it took, whether it met the tolerance, and why it stopped."""

    W: np.ndarray
    b: np.ndarray
    iterations: int
    converged: bool
    message: str


def fit_logistic(X: Any, y: np.ndarray, outputs: int, C: float, *,
                 start: tuple[np.ndarray, np.ndarray] | None = None, max_iter: int = 3000,
                 tol: float = 1e-4, chunk_rows: int = CHUNK_ROWS,
                 callback: Callable[[], None] | None = None) -> LogisticFit:
    """Minimize scikit-learn's L2 logistic-regression objective by L-BFGS in whitened coordinates.

    It stops where scikit-learn's L-BFGS stops: when every component of the gradient in the
    weights and intercepts (not in the whitened coordinates) is at most ``tol``, or when an
    iteration no longer lowers the loss (SciPy's ``ftol``, at scikit-learn's value).

    Args:
        X: (n, d) features: an array, or a :class:`graft.features.CachedFeatures` read in chunks.
        y: class indices ``0..k-1`` (``k = outputs``, or 2 when ``outputs == 1``: binary).
        outputs: rows of weights: 1 for the binary model, else the number of classes.
        C: inverse regularization strength, as scikit-learn's.
        start: ``(W, b)`` to start from (a warm start); zeros otherwise.
        max_iter, tol: L-BFGS iterations and gradient tolerance, as scikit-learn's.
        callback: called once per iteration (a progress bar).
    """
    from scipy.optimize import minimize

    n, d = X.shape
    # float32 products (half the time) reach the default tol; tighter ones need float64
    precision = np.float32 if tol >= FLOAT32_TOL else np.float64
    objective = _loss_and_gradient(X, y, outputs, C, chunk_rows, precision)
    whitening = _whitening(X, 4.0 / (C * n), chunk_rows)
    last: dict[str, Any] = {}

    def to_weights(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = whitening.apply(theta[: outputs * d].reshape(outputs, d))
        return W, theta[outputs * d:] - W @ whitening.mu

    def function(theta: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad_W, grad_b = objective(*to_weights(theta))
        last["theta"] = theta.copy()
        last["gradient"] = max(float(np.abs(grad_W).max()), float(np.abs(grad_b).max()))
        grad_V = whitening.apply(grad_W - np.outer(grad_b, whitening.mu))
        return loss, np.concatenate([grad_V.ravel(), grad_b])

    def step(intermediate_result: Any) -> None:
        if callback is not None:
            callback()
        if last["gradient"] <= tol and np.array_equal(intermediate_result.x, last["theta"]):
            last["converged"] = True
            raise StopIteration

    if start is None:
        theta = np.zeros(outputs * (d + 1))
    else:
        W, b = (np.asarray(v, dtype=np.float64) for v in start)
        theta = np.concatenate([whitening.unapply(W).ravel(), b + W @ whitening.mu])
    result = minimize(function, theta, jac=True, method="L-BFGS-B", callback=step,
                      options={"maxiter": max_iter, "gtol": 0.0,
                               "ftol": 64 * np.finfo(float).eps, "maxls": 50})
    converged = last.get("converged", False)
    W, b = to_weights(result.x)
    return LogisticFit(W, b, int(result.nit), converged or bool(result.success),
                       "gradient within tol" if converged else str(result.message))


def warn_unconverged(fit: LogisticFit) -> None:
    """scikit-learn's warning for an L-BFGS fit that stopped short."""
    if not fit.converged:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(f"L-BFGS did not converge in {fit.iterations} iterations ({fit.message}).",
                      ConvergenceWarning, stacklevel=3)


def solves(model: Any) -> bool:
    """Whether :func:`fit_logistic` fits ``model``'s settings: L2 penalty with a finite C, an
    intercept, no class weights, the lbfgs solver (scikit-learn's defaults)."""
    return (isinstance(model, LogisticRegression) and model.class_weight is None
            and model.fit_intercept and model.penalty in ("l2", "deprecated")
            and model.l1_ratio in (0, 0.0, None) and model.solver == "lbfgs"
            and np.isfinite(model.C) and model.C > 0)


class WhitenedLogisticRegression(LogisticRegression):
    """scikit-learn's ``LogisticRegression`` (L2 penalty, intercept, multinomial), fitted by
    :func:`fit_logistic` where the rows far outnumber the features: the same parameters, the same
    optimum, far fewer iterations on correlated features. ``predict``, ``predict_proba`` and the ONNX conversion are
    scikit-learn's (skl2onnx converts it as the ``LogisticRegression`` it is)."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> WhitenedLogisticRegression:
        """Fit by :func:`fit_logistic`; by scikit-learn's own ``fit`` when there are fewer than
        :data:`MIN_ROWS_PER_FEATURE` rows per feature, more than :data:`MAX_WHITENED_FEATURES`
        features, or settings it does not solve (see :func:`solves`)."""
        from sklearn.utils.multiclass import check_classification_targets
        from sklearn.utils.validation import validate_data

        self._validate_params()  # scikit-learn's checks of C, tol, max_iter, ...
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64), order="C",
                             accept_sparse="csr")
        n, d = X.shape
        if n < MIN_ROWS_PER_FEATURE * d or d > MAX_WHITENED_FEATURES or sample_weight is not None \
                or not solves(self) or not isinstance(X, np.ndarray):
            return super().fit(X, y, sample_weight=sample_weight)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"This solver needs samples of at least 2 classes in the data, but "
                             f"the data contains only one class: {self.classes_[0]!r}.")
        outputs = 1 if len(self.classes_) == 2 else len(self.classes_)
        start = None
        if self.warm_start and getattr(self, "coef_", np.empty(0)).shape == (outputs, X.shape[1]):
            start = (self.coef_, self.intercept_)
        fit = fit_logistic(X, np.searchsorted(self.classes_, y), outputs, float(self.C),
                           start=start, max_iter=self.max_iter, tol=self.tol)
        warn_unconverged(fit)
        self.coef_, self.intercept_ = fit.W, fit.b
        self.n_iter_ = np.array([fit.iterations], dtype=np.int32)
        return self


def register_onnx_converter() -> None:
    """Convert it to ONNX as skl2onnx converts ``LogisticRegression`` (called before export)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.operator_converters.linear_classifier import convert_sklearn_linear_classifier
    from skl2onnx.shape_calculators.linear_classifier import (
        calculate_linear_classifier_output_shapes,
    )

    update_registered_converter(
        WhitenedLogisticRegression, "GraftWhitenedLogisticRegression",
        calculate_linear_classifier_output_shapes, convert_sklearn_linear_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False],
                 "output_class_labels": [False, True], "raw_scores": [True, False]})
