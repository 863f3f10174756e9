"""Training a head out of core: the features are read from the cache a chunk at a time, and the
whole matrix never exists in memory.

The ``sgd`` head is scikit-learn's ``StandardScaler`` + ``SGDClassifier(loss="log_loss")``
(logistic regression by stochastic gradient descent). In memory it fits like any estimator; out
of core :func:`fit_out_of_core` makes one pass for the scaler's mean and variance
(``partial_fit``), then ``epochs`` passes of ``SGDClassifier.partial_fit`` over the chunks in a
fresh random order each time, the rows of each chunk shuffled. The result is the same fitted
pipeline, so it is saved, exported to ONNX and scored like every other head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from graft.errors import ConfigError
from graft.features.store import CHUNK_ROWS, chunk_bounds, read_rows

__all__ = ["CHUNK_ROWS", "EPOCHS", "STREAMING_HEADS", "fit_out_of_core", "sgd_head"]

STREAMING_HEADS = ("sgd",)  # the heads that train out of core
EPOCHS = 5  # passes over the training rows out of core


def sgd_head(seed: int, y: np.ndarray | None = None) -> Pipeline:
    """The ``sgd`` head: standardized features, logistic loss, SGD with an averaged solution."""
    return make_pipeline(StandardScaler(),
                         SGDClassifier(loss="log_loss", alpha=1e-4, average=True,
                                       random_state=seed))


def fit_out_of_core(estimator: BaseEstimator, X: Any, y: np.ndarray, *, epochs: int = EPOCHS,
                    chunk_rows: int = CHUNK_ROWS, seed: int | None = None,
                    progress: bool = True) -> BaseEstimator:
    """Fit a streaming head (``sgd``) on ``X`` read ``chunk_rows`` at a time.

    Args:
        estimator: An unfitted ``sgd`` head (:func:`sgd_head`).
        X: A :class:`graft.features.CachedFeatures` (or any array; then it is read in chunks too).
        y: Class indices, one per row of ``X`` (in memory: 8 bytes a row).
        seed: Of the chunk and row order (default: the classifier's ``random_state``).

    Raises:
        ConfigError: For a head that cannot train in chunks.
    """
    steps = getattr(estimator, "steps", None)
    if not (isinstance(estimator, Pipeline) and len(steps) == 2
            and isinstance(steps[0][1], StandardScaler)
            and hasattr(steps[1][1], "partial_fit")):
        raise ConfigError(f"Out of core, a head must train in chunks: use one of "
                          f"{', '.join(STREAMING_HEADS)}. Got {type(estimator).__name__}.")
    if epochs < 1 or chunk_rows < 1:
        raise ConfigError(f"epochs and chunk_rows must be >= 1. Got {epochs!r}, {chunk_rows!r}.")
    y = np.asarray(y)
    if len(y) != len(X):
        raise ConfigError(f"X has {len(X)} rows but y has {len(y)} labels.")
    scaler, classifier = steps[0][1], steps[1][1]
    classes = np.unique(y)
    chunks = chunk_bounds(len(X), chunk_rows)
    rng = np.random.default_rng(classifier.random_state if seed is None else seed)
    bar = tqdm(total=len(chunks) * (epochs + 1), unit="chunk", desc="Fitting sgd out of core",
               disable=not progress, dynamic_ncols=True, leave=False)
    try:
        for start, stop in chunks:  # pass 1: the scaler's mean and variance
            scaler.partial_fit(read_rows(X, start, stop))
            bar.update()
        for _ in range(epochs):
            for index in rng.permutation(len(chunks)):
                start, stop = chunks[index]
                order = rng.permutation(stop - start)
                rows = scaler.transform(read_rows(X, start, stop))[order]
                classifier.partial_fit(rows, y[start:stop][order], classes=classes)
                bar.update()
    finally:
        bar.close()
    return estimator
