"""Heads: scikit-learn and small PyTorch classifiers on cached features, exportable to ONNX."""

from typing import TYPE_CHECKING

from graft._lazy import lazy_exports
from graft.heads.fitting import fit_head, fitting_threads
from graft.heads.onnx import PROBABILITIES, head_to_onnx, module_to_onnx, onnx_probabilities
from graft.heads.registry import (
    DEFAULT_HEAD,
    HEADS,
    check_head_scales,
    create_head,
    describe_head,
    final_estimator,
    list_heads,
    select_head,
)
from graft.heads.streaming import STREAMING_HEADS, refit_in_chunks

if TYPE_CHECKING:
    from graft.heads.torch_heads import TorchMLPClassifier, TorchSoftmaxClassifier

# The PyTorch heads are imported on first use: the scikit-learn heads never load torch.
__getattr__, __dir__ = lazy_exports(__name__, {
    "TorchMLPClassifier": "graft.heads.torch_heads",
    "TorchSoftmaxClassifier": "graft.heads.torch_heads",
})

__all__ = [
    "DEFAULT_HEAD",
    "HEADS",
    "PROBABILITIES",
    "STREAMING_HEADS",
    "TorchMLPClassifier",
    "TorchSoftmaxClassifier",
    "check_head_scales",
    "create_head",
    "describe_head",
    "final_estimator",
    "fit_head",
    "fitting_threads",
    "head_to_onnx",
    "list_heads",
    "module_to_onnx",
    "onnx_probabilities",
    "refit_in_chunks",
    "select_head",
]
