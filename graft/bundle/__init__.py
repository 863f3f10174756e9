"""Bundle: the self-describing model directory, and the one inference pipeline over it."""

from graft.bundle.model import MODEL_FORMAT, file_sha256, load_model_config, save_model
from graft.bundle.predict import Prediction, Predictor, load_predictor, top_k_labels

__all__ = [
    "MODEL_FORMAT",
    "Prediction",
    "Predictor",
    "file_sha256",
    "load_model_config",
    "load_predictor",
    "save_model",
    "top_k_labels",
]
