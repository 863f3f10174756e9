"""graft: transfer learning for image classification.

Pretrained CNN features (cached, extracted fast with ONNX Runtime), scikit-learn and small PyTorch
heads, honest held-out evaluation, and a self-describing model directory that predicts with
onnxruntime alone.

The public API::

    import graft
    predictor = graft.load("my-model")           # numpy + Pillow + onnxruntime only
    predictor("photo.jpg", top_k=3)              # [{"label": ..., "index": ..., "score": ...}]
    predictor.predict_proba(["a.jpg", "b.png"])  # (N, C) array

    result = graft.train("flowers/", out="my-model", head="logreg")   # needs graft[train]
    graft.evaluate("my-model", "flowers/")       # its held-out test split, honestly
    graft.extract("flowers/", "features.h5")
    clf = graft.ImageClassifier(head="svm")      # scikit-learn estimator over image paths

Names are imported on first use, so ``import graft`` stays light and loading a model never
imports the training stack.
"""

from __future__ import annotations

from graft._lazy import lazy_exports
from graft._version import __version__
from graft.errors import (
    BackboneError,
    ClusterError,
    ConfigError,
    DataError,
    GraftError,
    ImageError,
    MissingExtraError,
    ModelError,
    WeightsError,
)


__all__ = [
    "BackboneError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "EvaluateConfig",
    "EvaluateResult",
    "ExtractConfig",
    "FinetuneConfig",
    "GraftError",
    "ImageClassifier",
    "ImageError",
    "MissingExtraError",
    "ModelError",
    "PredictConfig",
    "Prediction",
    "Predictor",
    "TrainConfig",
    "TrainResult",
    "WeightsError",
    "__version__",
    "evaluate",
    "extract",
    "load",
    "predict",
    "train",
]

_LAZY = {
    "load": "graft.inference.predictor",
    "Predictor": "graft.inference.predictor",
    "Prediction": "graft.inference.predictor",
    "predict": "graft.workflows.predict",
    "evaluate": "graft.workflows.evaluate",
    "EvaluateResult": "graft.workflows.evaluate",
    "extract": "graft.workflows.extract",
    "train": "graft.workflows.train",
    "TrainConfig": "graft.config",
    "ExtractConfig": "graft.config",
    "EvaluateConfig": "graft.config",
    "PredictConfig": "graft.config",
    "FinetuneConfig": "graft.config",
    "TrainResult": "graft.workflows.train",
    "ImageClassifier": "graft.estimator",
}
_NEEDS_TRAIN = {"extract", "train", "TrainResult", "ImageClassifier"}  # not the configs: lean




def _check_extra(name: str) -> None:
    if name in _NEEDS_TRAIN:
        from graft.extras import require

        require("train", command=f"graft.{name}")


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, before=_check_extra)
