"""One inference pipeline (preprocess -> forward -> postprocess), used by the CLI, evaluation and
serving: images in, ``[{"label": ..., "score": ...}]`` out."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.bundle.model import load_model_config
from graft.data.preprocess import PreprocessConfig, resize_and_crop
from graft.errors import ConfigError
from graft.features.engine import OnnxEngine, iter_decoded_batches
from graft.features.fusion import fuse_features
from graft.heads.onnx import PROBABILITIES

__all__ = ["Prediction", "Predictor", "load_predictor", "top_k_labels"]


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


def top_k_labels(probabilities: np.ndarray, labels: list[str], k: int) -> list[list[dict[str, Any]]]:
    """Postprocess: the ``k`` best ``{"label", "score"}`` per row, best first."""
    k = max(1, min(int(k), len(labels)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"label": labels[j], "score": float(row[j])} for j in top]
        for row, top in zip(probabilities, order)
    ]


class Predictor:
    """A loaded model directory: backbone and head ONNX sessions, labels and preprocessing."""

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None,
                 batch_size: int = 32, verify: bool = True) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        self.config = load_model_config(self.model_dir, verify=verify)
        self.labels: list[str] = list(self.config["labels"])
        self.engines = [
            OnnxEngine(
                self.model_dir / backbone["file"]["path"],
                key=backbone["feature_key"],
                preprocess=PreprocessConfig.from_dict(backbone["preprocess"]),
                num_features=int(backbone["num_features"]),
                threads=threads,
                batch_size=batch_size,
            )
            for backbone in self.config["backbones"]
        ]
        self.preprocess = [engine.preprocess for engine in self.engines]
        self.batch_size = batch_size
        self.head = ort.InferenceSession(
            os.fspath(self.model_dir / self.config["files"]["head"]["path"]),
            providers=["CPUExecutionProvider"],
        )

    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        """Head forward: (N, D) features -> (N, C) probabilities."""
        features = np.asarray(features, dtype=np.float32)
        if len(features) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.head.run([PROBABILITIES], {"features": features})[0]

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """Forward: one ``uint8`` (N, H, W, 3) batch per backbone, prepared as its config says."""
        features = [engine(batch) for engine, batch in zip(self.engines, images)]
        return self.probabilities_from_features(fuse_features(features))

    def predict_images(self, images: Iterable[Any], top_k: int = 5) -> list[list[dict[str, Any]]]:
        """Predict PIL images (already decoded, e.g. from an HTTP upload)."""
        from graft.data.images import to_rgb

        images = [to_rgb(image) for image in images]
        if not images:
            return []
        batches = [np.stack([resize_and_crop(image, config) for image in images])
                   for config in self.preprocess]
        return top_k_labels(self.probabilities(batches), self.labels, top_k)

    def predict_paths(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        top_k: int = 5,
        workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Stream predictions for image files in the order given (unreadable files get an error).

        Files are decoded and run in batches of the predictor's ``batch_size``.
        """
        if top_k < 1:
            raise ConfigError(f"The 'top_k' parameter must be >= 1. Got {top_k!r} instead.")
        for batch in iter_decoded_batches(
            ((i, p) for i, p in enumerate(paths)), self.preprocess, batch_size=self.batch_size,
            workers=workers, path_of=lambda item: item[1],
        ):
            results = [(i, Prediction(os.fspath(p), error=reason)) for (i, p), reason in batch.failures]
            if batch.items:
                ranked = top_k_labels(self.probabilities(batch.images), self.labels, top_k)
                results += [(i, Prediction(os.fspath(p), predictions=r))
                            for (i, p), r in zip(batch.items, ranked)]
            for _, prediction in sorted(results, key=lambda pair: pair[0]):
                yield prediction


def load_predictor(model_dir: str | os.PathLike, **kwargs: Any) -> Predictor:
    """Load a model directory for prediction."""
    return Predictor(model_dir, **kwargs)
