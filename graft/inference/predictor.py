"""The one inference pipeline over a model directory: ``preprocess -> forward -> postprocess``.

``graft predict``, ``graft evaluate``, ``graft serve`` and the final scores of ``graft train``
and ``graft finetune`` go through :class:`Predictor` (``--engine ray`` runs its backbones on the
cluster), and it needs only numpy, Pillow and onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.bundle.fusion import fuse_features
from graft.bundle.model import load_model_config
from graft.data.images import ImageSource, describe_source
from graft.errors import ConfigError, ImageError
from graft.inference.batches import iter_decoded_batches
from graft.inference.engine import OnnxEngine, create_session
from graft.inference.images import preprocess
from graft.system import plan_threads

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PROBABILITIES", "Prediction", "Predictor", "load", "top_k_predictions"]

PROBABILITIES = "probabilities"  # the head graph's output


@dataclass
class Prediction:
    """Top-k predictions for one input, or the reason it could not be read."""

    path: str
    predictions: list[dict[str, Any]] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path}
        if self.error is not None:
            data["error"] = self.error
        else:
            data["predictions"] = self.predictions
        return data


def top_k_predictions(probabilities: np.ndarray, labels: Sequence[str],
                      k: int) -> list[list[dict[str, Any]]]:
    """Postprocess: the ``k`` best ``{"label", "index", "score"}`` per row, best first."""
    if int(k) < 1:
        raise ConfigError(f"top_k must be >= 1. Got {k!r} instead.", parameter="top_k")
    k = min(int(k), len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"label": labels[j], "index": int(j), "score": float(row[j])} for j in best]
        for row, best in zip(probabilities, order)
    ]


def _is_many(images: Any) -> bool:
    if isinstance(images, (list, tuple)):
        return True
    if isinstance(images, np.ndarray):
        return images.ndim == 4
    return not isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) and (
        hasattr(images, "__iter__") and not hasattr(images, "read")
        and not hasattr(images, "getpixel"))


class Predictor:
    """A loaded model directory, ready to predict.

    Call it like a transformers pipeline::

        predictor = graft.load("my-model")
        predictor("photo.jpg")               # [{"label": "daisy", "index": 2, "score": 0.97}, ...]
        predictor(["a.jpg", b"..."], top_k=3)  # one such list per image
        predictor.predict_proba(images)      # (N, C) array, columns in ``predictor.labels`` order

    Images may be paths, bytes, binary file objects, PIL images or ``uint8`` arrays; each goes
    through the same decode as training (EXIF orientation, mode conversion, pixel limit, JPEG
    draft decode).

    Attributes:
        labels: Class names, in probability-column order.
        config: The model's ``graft.json`` (:class:`graft.bundle.ModelConfig`).
        engines: One backbone engine per (fused) backbone.
        preprocess_configs: How an image becomes each backbone's input.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None,
                 batch_size: int = 32, verify: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1. Got {batch_size!r} instead.",
                              parameter="batch_size")
        self.model_dir = Path(model_dir)
        self.config = load_model_config(self.model_dir, verify=verify)
        self.labels: list[str] = list(self.config.labels)
        self.threads = plan_threads(threads)
        self.batch_size = int(batch_size)
        self.engines = [
            OnnxEngine(
                self.model_dir / backbone.file.path,
                key=backbone.feature_key,
                preprocess=backbone.preprocess,
                num_features=backbone.num_features,
                threads=self.threads.onnx,
            )
            for backbone in self.config.backbones
        ]
        self.preprocess_configs = [engine.preprocess for engine in self.engines]
        self.head = create_session(self.model_dir / self.config.head_file.path,
                                   threads=self.threads.onnx)
        for engine in self.engines:
            engine.session  # noqa: B018 - load every graph now, not on the first request

    def __repr__(self) -> str:
        return (f"Predictor({os.fspath(self.model_dir)!r}, "
                f"backbone={self.config.backbone_names!r}, head={self.config.head.name!r}, "
                f"classes={len(self.labels)})")

    def close(self) -> None:
        """Stop the backbone engines' worker threads (a later call starts them again)."""
        for engine in self.engines:
            engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- the three steps -------------------------------------------------------------------
    def preprocess(self, image: ImageSource) -> list[np.ndarray]:
        """Decode one image and prepare it for each backbone (``uint8`` HxWx3 per backbone)."""
        return preprocess(image, self.preprocess_configs)

    def features(self, batches: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone forward: one ``uint8`` (N, H, W, 3) batch per backbone -> fused features."""
        return fuse_features([engine(batch) for engine, batch in zip(self.engines, batches)])

    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        """Head forward: (N, D) features -> (N, C) probabilities."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.head.run([PROBABILITIES], {"features": features})[0]

    def forward(self, batches: Sequence[np.ndarray]) -> np.ndarray:
        """Backbones, fusion and head: prepared batches -> (N, C) probabilities."""
        return self.probabilities_from_features(self.features(batches))

    def postprocess(self, probabilities: np.ndarray, top_k: int = 5) -> list[list[dict[str, Any]]]:
        """(N, C) probabilities -> the ``top_k`` ``{"label", "index", "score"}`` per image."""
        return top_k_predictions(probabilities, self.labels, top_k)

    # -- conveniences ----------------------------------------------------------------------
    def _batches(self, images: Sequence[ImageSource]) -> Iterator[list[np.ndarray]]:
        workers = self.threads.decode if len(images) > 1 else 0  # one image: no thread pool
        for batch in iter_decoded_batches(enumerate(images), self.preprocess_configs,
                                          batch_size=self.batch_size, workers=workers,
                                          prefetch=self.engines[0].prefetch,
                                          source_of=lambda item: item[1]):
            if batch.failures:
                (index, image), reason = batch.failures[0]
                raise ImageError(f"{describe_source(image)} (image {index})", reason)
            yield batch.images

    def predict_proba(self, images: ImageSource | Iterable[ImageSource]) -> np.ndarray:
        """Class probabilities, an (N, C) array (N = 1 for a single image).

        Raises:
            ImageError: For an image that cannot be decoded, naming it.
        """
        images = list(images) if _is_many(images) else [images]
        blocks = [self.forward(batches) for batches in self._batches(images)]
        if not blocks:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.concatenate(blocks)

    def __call__(self, images: ImageSource | Iterable[ImageSource],
                 top_k: int = 5) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Top-k predictions: a list of ``{"label", "index", "score"}`` for one image, or one such
        list per image for a list of images (the transformers-pipeline shape)."""
        many = _is_many(images)
        ranked = self.postprocess(self.predict_proba(images), top_k)
        return ranked if many else ranked[0]

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        top_k: int = 5,
        on_result: Any = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for image files in the order given; unreadable files get an error.

        Files are decoded in worker threads and run in batches of the predictor's
        ``batch_size``; ``on_result(n)`` is called after every ``n`` results (progress bars).
        """
        if int(top_k) < 1:
            raise ConfigError(f"top_k must be >= 1. Got {top_k!r} instead.", parameter="top_k")
        for batch in iter_decoded_batches(
            enumerate(paths), self.preprocess_configs, batch_size=self.batch_size,
            workers=self.threads.decode, prefetch=self.engines[0].prefetch,
            source_of=lambda item: item[1],
        ):
            results = [(i, Prediction(os.fspath(p), error=reason))
                       for (i, p), reason in batch.failures]
            if batch.items:
                ranked = self.postprocess(self.forward(batch.images), top_k)
                results += [(i, Prediction(os.fspath(p), predictions=r))
                            for (i, p), r in zip(batch.items, ranked)]
            for _, prediction in sorted(results, key=lambda pair: pair[0]):
                yield prediction
            if on_result is not None:
                on_result(len(results))



def load(model_dir: str | os.PathLike, *, threads: int | None = None, batch_size: int = 32,
         verify: bool = True) -> Predictor:
    """Load a model directory (``graft train``/``graft finetune`` output) for prediction.

    Args:
        model_dir: The directory holding ``graft.json`` and its ONNX graphs.
        threads: CPUs to use (default: all this process may use), split between image decoding
            and ONNX Runtime.
        batch_size: Images per forward pass when predicting many.
        verify: Check every graph's SHA-256 against ``graft.json`` (refuse a changed file).

    Returns:
        A :class:`Predictor`: ``predictor(images, top_k=5)``, ``predictor.predict_proba(images)``.

    Raises:
        ModelError: For a missing, incomplete, changed or incompatible model directory.
    """
    return Predictor(model_dir, threads=threads, batch_size=batch_size, verify=verify)
