"""Bundle: the self-describing model directory (``graft.json`` + ONNX graphs), verified on load."""

from graft.bundle.config import MODEL_FORMAT, MODEL_FORMAT_VERSION, BackboneRecipe, FileSpec
from graft.bundle.config import HeadSpec, ModelConfig, SplitSpec, TrainingSpec  # noqa: I001
from graft.bundle.model import file_sha256, load_model_config, save_model

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "BackboneRecipe", "FileSpec", "HeadSpec",
           "ModelConfig", "SplitSpec", "TrainingSpec", "file_sha256", "load_model_config",
           "save_model"]
