"""Heads: scikit-learn and small PyTorch classifiers on cached features, exportable to ONNX."""

from graft.heads.onnx import PROBABILITIES, head_to_onnx, module_to_onnx, onnx_probabilities
from graft.heads.registry import (
    DEFAULT_HEAD,
    HEADS,
    create_head,
    describe_head,
    final_estimator,
    list_heads,
    select_head,
)
from graft.heads.torch_heads import TorchMLPClassifier, TorchSoftmaxClassifier

__all__ = [
    "DEFAULT_HEAD",
    "HEADS",
    "PROBABILITIES",
    "TorchMLPClassifier",
    "TorchSoftmaxClassifier",
    "create_head",
    "describe_head",
    "final_estimator",
    "head_to_onnx",
    "list_heads",
    "module_to_onnx",
    "onnx_probabilities",
    "select_head",
]
