"""int8 backbones: static QDQ quantization with ONNX Runtime, calibrated on the user's own images.

``precision="int8"`` quantizes the exported fp32 graph once per backbone and calibration set
(cached by key like the fp32 graph), and the features, the model directory and prediction all use
that one int8 graph. What stays in float: the in-graph normalization (cast, subtract, divide), the
first convolution (it sees raw pixels, where 8 bits lose the most), and the final pooling. On an
AVX2 CPU int8 extracts faster with held-out accuracy within a point of fp32; MinMax calibration,
because Percentile scored no better and calibrates far slower (``benchmarks/int8_accuracy.py``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft.catalog import MODEL_PRECISIONS
from graft.errors import ConfigError, ModelError
from graft.inference.batches import iter_decoded_batches
from graft.inference.engine import OnnxEngine

__all__ = [
    "CALIBRATION_IMAGES",
    "PRECISIONS",
    "calibration_identity",
    "calibration_images",
    "quantize_engine",
]

PRECISIONS = MODEL_PRECISIONS  # the graphs a model directory ships: named once, in the catalog
CALIBRATION_IMAGES = 200  # "a few hundred": more changed nothing measurable, and costs time
_QUANT_FORMAT = 1  # bump when the quantization recipe changes, so cached graphs are rebuilt
_FLOAT_OPS = ("Transpose", "Cast", "Sub", "Div", "GlobalAveragePool", "Flatten", "ReduceMean")


def calibration_images(paths: Sequence[Any], limit: int = CALIBRATION_IMAGES) -> list[Any]:
    """Up to ``limit`` images spread evenly over ``paths`` (sorted by class, so every class is
    represented), the same ones every run."""
    from graft.data.dataset import spread_indices

    paths = list(paths)
    return [paths[i] for i in spread_indices(len(paths), limit)]


def calibration_identity(images: Sequence[Any]) -> str:
    """What the calibration set is, by content (the images' content hashes): part of each int8
    graph's key. Computed once for all the backbones calibrated on the same images."""
    from graft.data.contents import content_hashes

    prints = content_hashes([p for p in images if isinstance(p, (str, os.PathLike))])
    return ",".join(map(str, sorted(prints.tolist())))


def _static_batch(source: Path, target: Path) -> None:
    """The graph with its batch axis fixed to one image (what the CPU engine runs), so every
    shape is known and the quantizer can fold the shape arithmetic."""
    import onnx

    model = onnx.load(str(source))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(target))


def _quantize(source: Path, target: Path, calibration: list[np.ndarray], input_name: str) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch[None]}

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        static, prepared = Path(tmp) / "static.onnx", Path(tmp) / "prepared.onnx"
        _static_batch(source, static)
        quant_pre_process(str(static), str(prepared))
        nodes = onnx.load(str(prepared)).graph.node
        first_conv = next((n.name for n in nodes if n.op_type == "Conv"), None)
        keep_float = [n.name for n in nodes if n.op_type in _FLOAT_OPS]
        keep_float += [first_conv] if first_conv else []
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float, calibrate_method=CalibrationMethod.MinMax,
            reduce_range=True,  # AVX2 without VNNI: avoid u8s8 saturation
        )
        os.replace(out, target)


def quantize_engine(engine: OnnxEngine, images: Sequence[Any], *,
                    identity: str | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    log: Any = None) -> OnnxEngine:
    """An int8 engine for ``engine``'s fp32 graph, calibrated on ``images`` (the training split:
    paths, up to :data:`CALIBRATION_IMAGES` of them). Cached by the fp32 key and the calibration
    images' content (``identity``, from :func:`calibration_identity` if not given), so a re-run
    quantizes nothing.
    """
    from graft.config import resolve_cache_dir

    if not isinstance(engine, OnnxEngine):
        raise ConfigError("precision='int8' runs on ONNX Runtime: use device='cpu'.",
                          parameter=("precision", "device"))
    images = list(images)
    if not images:
        raise ConfigError("precision='int8' needs training images to calibrate on.",
                          parameter="precision")
    if identity is None:
        identity = calibration_identity(images)
    text = f"{engine.key}|int8|{_QUANT_FORMAT}|{identity}"
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    target = resolve_cache_dir(cache_dir) / "onnx" / f"{engine.path.stem}-int8-{key}.onnx"
    if not target.is_file():
        calibration = [array for batch in iter_decoded_batches(images, [engine.preprocess])
                       for array in batch.images[0]]  # unreadable files are left out
        if log is not None:
            log(f"Quantizing the backbone to int8, calibrated on {len(calibration)} training "
                f"images...")
        try:
            _quantize(engine.path, target, calibration, "images")
        except Exception as exc:  # onnxruntime's quantizer raises many types
            raise ModelError(
                f"precision='int8': ONNX Runtime could not quantize {engine.path.name} "
                f"({type(exc).__name__}: {exc}). Use precision='fp32' for this backbone.",
                parameter="precision"
            ) from exc
    return OnnxEngine(target, key=key, preprocess=engine.preprocess,
                      num_features=engine.num_features, threads=engine.threads,
                      device=engine.device)
