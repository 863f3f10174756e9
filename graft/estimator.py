"""``ImageClassifier``: a scikit-learn estimator over image *paths* (or a ``uint8`` image array),
at feature-cache speed.

Features come from graft's on-disk cache (extracted once per image and backbone), so
``cross_val_score`` and ``GridSearchCV`` over heads or backbones refit only the head: the images
go through the network the first time they are seen, never again.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from graft.catalog import DEFAULT_BACKBONE, DEFAULT_HEAD
from graft.errors import DataError

__all__ = ["ImageClassifier"]


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(os.fspath(v) for v in value)
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@functools.lru_cache(maxsize=8)
def _extractor(backbone: Any, layer: Any, weights: Any, pool: str | None,
               image_size: int | None, device: str, cache_dir: str | None):
    """Backbones and engines, built once per process per setting (cross-validation refits)."""
    from graft.workflows._common import build_backbones

    return tuple(build_backbones(backbone, layer=layer, weights=weights, pool=pool,
                                 image_size=image_size, device=device, cache_dir=cache_dir))


def _as_paths(X: Any, cache_dir: Any = None) -> list[Path | str]:
    """Image paths (URIs such as ``s3://...`` stay strings), or a ``uint8`` image array
    (N, H, W[, 3]) written as PNG files in the cache (by content:
    :func:`graft.data.arrays.array_images`)."""
    if isinstance(X, (str, os.PathLike)):
        raise DataError(
            "ImageClassifier takes a list of image paths, not one path. Wrap it: [path]."
        )
    if isinstance(X, np.ndarray) and X.dtype == np.uint8:
        from graft.data.arrays import array_images

        return array_images(X, cache_dir=cache_dir)
    items = list(np.asarray(X, dtype=object).ravel()) if isinstance(X, np.ndarray) else list(X)
    if not all(isinstance(item, (str, os.PathLike)) for item in items):
        raise DataError(
            "ImageClassifier takes image file paths (str or Path), or a uint8 array of images "
            "(N, H, W, 3) or (N, H, W). For PIL images, save them first or stack them into an "
            "array (np.stack([np.asarray(image) for image in images]))."
        )
    from graft.data.storage import is_uri

    return [item if is_uri(item) else Path(item) for item in items]


class ImageClassifier(ClassifierMixin, BaseEstimator):
    """A pretrained backbone (features cached on disk) and a head, as one scikit-learn classifier.

    Example::

        from sklearn.model_selection import GridSearchCV, cross_val_score
        clf = graft.ImageClassifier(head="logreg")
        cross_val_score(clf, paths, labels, cv=5)              # extracts once, then cache speed
        GridSearchCV(clf, {"head": ["logreg", "svm"]}).fit(paths, labels)
        clf.fit(paths, labels).save("my-model")                # graft.load("my-model") predicts

    Args:
        backbone: Registry or timm name (``"a+b"`` fuses several).
        layer: Where to cut the backbone (default: its own default).
        weights: Weights file/URL; default the offline weights or the model hub.
        pool: Reduction of spatial maps (``avg``, ``max``, ``avgmax``, ``flatten``) or of a
            transformer's tokens (``cls``, ``mean``, ``cls+mean``, ``map``); None: the
            backbone's recipe.
        image_size: Input resolution override.
        head: A head name from ``graft heads`` (not ``auto``: use ``GridSearchCV`` over ``head``).
        random_state: Seed of the head.
        batch_size: Images per forward pass when extracting.
        device: ``auto``, ``cpu`` (ONNX Runtime), ``cuda`` or ``torch``.
        cache_dir: Feature cache (default ``$GRAFT_CACHE_DIR`` or the user cache).
        progress: Show a progress bar while extracting.

    Attributes:
        classes_: The labels seen in ``fit``, sorted.
        head_: The fitted head (a scikit-learn estimator on features).
        backbones_: Each backbone's recipe (:class:`graft.bundle.BackboneRecipe`, as a model
            directory stores it).
        n_features_in_: Length of the feature vector the head takes.
        fit_seconds_: How long fitting the head took (features excluded).
    """

    def __init__(self, *, backbone: str | Sequence[str] = DEFAULT_BACKBONE,
                 layer: str | Sequence[str] | None = None,
                 weights: str | Sequence[str] | None = None, pool: str | None = None,
                 image_size: int | None = None, head: str = DEFAULT_HEAD,
                 random_state: int = 0, batch_size: int = 32, device: str = "auto",
                 cache_dir: str | None = None, progress: bool = False) -> None:
        self.backbone = backbone
        self.layer = layer
        self.weights = weights
        self.pool = pool
        self.image_size = image_size
        self.head = head
        self.random_state = random_state
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
        self.progress = progress

    def _engines(self):
        return _extractor(_hashable(self.backbone), _hashable(self.layer),
                          _hashable(self.weights), self.pool, self.image_size, self.device,
                          None if self.cache_dir is None else os.fspath(self.cache_dir))

    def features(self, X: Any) -> np.ndarray:
        """The (fused) backbone features of image paths, from the cache or extracted now.

        Raises:
            DataError: Listing the files that cannot be decoded.
        """
        from graft.data.dataset import ImageDataset, Sample
        from graft.features import extract_dataset, fuse_features, open_cache

        paths = _as_paths(X, self.cache_dir)
        engines = [built.engine for built in self._engines()]
        caches = [open_cache(engine, self.cache_dir) for engine in engines]
        dataset = ImageDataset(root=Path("."), classes=[], layout="paths", samples=[
            Sample(path=os.fspath(p), relpath=os.fspath(p), label="") for p in paths])
        keys, report = extract_dataset(dataset, engines, caches, batch_size=self.batch_size,
                                       progress=self.progress)
        if report.failures:
            listed = "; ".join(f"{p}: {r}" for p, r in report.failures[:5])
            more = f" (and {len(report.failures) - 5} more)" if len(report.failures) > 5 else ""
            raise DataError(f"{len(report.failures)} image(s) cannot be read: {listed}{more}. "
                            f"Remove them from the input.")
        return fuse_features([cache.get(keys) for cache in caches])

    def fit(self, X: Any, y: Any) -> ImageClassifier:
        """Extract (or read cached) features of the images ``X`` and fit the head on ``y``."""
        from graft.heads import create_head, fit_head

        paths, y = _as_paths(X, self.cache_dir), np.asarray(y)
        if len(y) != len(paths):
            raise DataError(f"X has {len(paths)} images but y has {len(y)} labels.")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError(f"fit needs at least two classes; y holds only {self.classes_}.")
        features = self.features(paths)
        self.head_, self.fit_seconds_ = fit_head(
            create_head(self.head, random_state=self.random_state, y=y_index), features, y_index,
            name=self.head)
        self.n_features_in_ = features.shape[1]
        self.backbones_ = [built.recipe for built in self._engines()]
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, C) class probabilities, columns in ``classes_`` order."""
        from graft.heads import fitting_threads

        check_is_fitted(self, "head_")
        features = self.features(X)
        with fitting_threads():
            probabilities = self.head_.predict_proba(features)
        full = np.zeros((len(probabilities), len(self.classes_)), dtype=np.float64)
        full[:, np.asarray(self.head_.classes_, dtype=int)] = probabilities
        return full

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each image."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write a model directory that :func:`graft.load` and ``graft predict`` read.

        The model is written beside ``directory`` and moved into place, so a failed save leaves
        what was there; an existing model directory is replaced whole.

        Raises:
            ConfigError: ``directory`` exists, is not empty and is not a graft model directory.
        """
        from graft.bundle import HeadSpec, SplitSpec, TrainingSpec, save_model
        from graft.bundle.model import staged_model_dir
        from graft.heads import describe_head, head_to_onnx

        check_is_fitted(self, "head_")
        built = self._engines()
        if not all(hasattr(b.engine, "path") for b in built):
            raise DataError("save needs the ONNX engine: fit with device='cpu' or 'auto' on CPU.")
        with staged_model_dir(directory, param="directory") as staging:
            save_model(
                staging,
                backbone_onnx=[b.engine.path for b in built],
                head_onnx=head_to_onnx(self.head_, self.n_features_in_),
                labels=[str(label) for label in self.classes_],
                backbones=[b.recipe for b in built],
                feature_keys=[b.engine.key for b in built],
                head=HeadSpec.from_dict({"name": self.head, **describe_head(self.head_)}),
                metrics={"note": "saved by ImageClassifier.save: score it with graft evaluate"},
                training=TrainingSpec(source="graft.ImageClassifier.fit"),
                split=SplitSpec(source="caller"),
            )
        return Path(directory)
