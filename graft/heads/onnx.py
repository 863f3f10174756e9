"""Heads to ONNX: one graph from raw features to class probabilities, whatever the head.

scikit-learn heads go through skl2onnx; the PyTorch heads through ``torch.onnx``. The saved model
then needs only onnxruntime to predict, and loading it can never run code (no pickle).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
from sklearn.base import BaseEstimator

from graft.errors import ModelError
from graft.heads.registry import final_estimator
from graft.inference.predictor import PROBABILITIES  # the head graph's output, one name

__all__ = ["PROBABILITIES", "head_to_onnx", "module_to_onnx", "onnx_probabilities"]


def head_to_onnx(estimator: BaseEstimator, n_features: int) -> onnx.ModelProto:
    """Convert a fitted head to ONNX: input ``features`` float32 (N, D), output ``probabilities``."""
    final = final_estimator(estimator)
    if hasattr(final, "to_onnx_module"):  # a PyTorch head (torch imported only for those)
        return _torch_to_onnx(final, n_features)
    return _sklearn_to_onnx(final, n_features)


def _torch_to_onnx(head: Any, n_features: int) -> onnx.ModelProto:
    return module_to_onnx(head.to_onnx_module(), n_features)


def module_to_onnx(module: Any, n_features: int) -> onnx.ModelProto:
    """A torch module mapping (N, D) features to (N, C) probabilities, as a head graph."""
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.zeros(2, n_features),), buffer,
            input_names=["features"], output_names=[PROBABILITIES],
            dynamic_axes={"features": {0: "batch"}, PROBABILITIES: {0: "batch"}},
            opset_version=17, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _sklearn_to_onnx(estimator: BaseEstimator, n_features: int) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    from graft.heads.logistic import register_onnx_converter

    register_onnx_converter()
    try:
        with warnings.catch_warnings():
            # skl2onnx's SVC converter reads SVC.probA_/probB_, deprecated since scikit-learn 1.9
            # (for SVC(probability=True), which the svm head does not use); nothing to fix here.
            warnings.filterwarnings("ignore", message=r"Attribute `prob[AB]_` was deprecated",
                                    category=FutureWarning)
            model = to_onnx(
                estimator,
                initial_types=[("features", FloatTensorType([None, n_features]))],
                options={id(estimator): {"zipmap": False}} if not hasattr(estimator, "steps")
                else {id(estimator.steps[-1][1]): {"zipmap": False}},
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
    except Exception as exc:  # skl2onnx raises many types for unsupported models
        raise ModelError(
            f"Cannot convert the {type(estimator).__name__} head to ONNX ({exc})."
        ) from exc
    # skl2onnx names its outputs 'label' and 'probabilities'; keep only the probabilities.
    outputs = [o.name for o in model.graph.output]
    prob = next((o for o in outputs if "prob" in o), None)
    if prob is None:
        raise ModelError(f"The ONNX head has no probability output (outputs: {outputs}).")
    if prob != PROBABILITIES:
        for node in model.graph.node:
            node.output[:] = [PROBABILITIES if o == prob else o for o in node.output]
        for output in model.graph.output:
            if output.name == prob:
                output.name = PROBABILITIES
    return model


def onnx_probabilities(model: onnx.ModelProto, X: np.ndarray) -> np.ndarray:
    """Run a head graph on features (for parity checks)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([PROBABILITIES], {"features": np.asarray(X, dtype=np.float32)})[0]
