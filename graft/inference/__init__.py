"""Inference: the one path from an image to probabilities, ``preprocess -> forward -> postprocess``.

Imports only numpy, Pillow and onnxruntime, so a deployment installs the base package alone.
"""

from graft.bundle.fusion import FUSION, fuse_features
from graft.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    decode_image,
    load_image,
    to_rgb,
)
from graft.inference.batches import DecodedBatch, iter_decoded_batches
from graft.inference.engine import FeatureEngine, OnnxEngine, create_session
from graft.inference.images import draft_size, preprocess
from graft.inference.predictor import (
    PROBABILITIES,
    Prediction,
    Predictor,
    load,
    top_k_predictions,
)
from graft.system import ThreadPlan, available_cpus, plan_threads

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FUSION",
    "PROBABILITIES",
    "DecodedBatch",
    "FeatureEngine",
    "ImageSource",
    "OnnxEngine",
    "Prediction",
    "Predictor",
    "ThreadPlan",
    "available_cpus",
    "create_session",
    "decode_image",
    "draft_size",
    "fuse_features",
    "iter_decoded_batches",
    "load",
    "load_image",
    "plan_threads",
    "preprocess",
    "to_rgb",
    "top_k_predictions",
]
