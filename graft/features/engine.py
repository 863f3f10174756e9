"""Feature engines for training: ONNX Runtime on CPU (faster than eager PyTorch there:
``benchmarks/extract_speed.py``), torch on CUDA, and the ONNX export of a backbone.

Both take ``uint8`` NHWC batches (normalization is inside the graph) and return float32 features.
The ONNX engine itself is the inference one (:class:`graft.inference.OnnxEngine`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graft.data.preprocess import PreprocessConfig
from graft.errors import ConfigError
from graft.inference.engine import BATCH_AXIS, FeatureEngine, OnnxEngine

__all__ = [
    "AUTOCAST",
    "EXPORT_FORMAT",
    "FeatureEngine",
    "OnnxEngine",
    "TorchEngine",
    "backbone_key",
    "check_cuda",
    "create_engine",
    "exact_float32",
    "export_backbone_onnx",
    "fused_key",
    "precision_key",
]

EXPORT_FORMAT = 4  # bump when the exported graph or the CPU-side resize changes: caches rebuild


def backbone_key(config: dict[str, Any]) -> str:
    """Identity of a feature extractor: same key, same features for the same image."""
    ident = {k: config[k] for k in ("name", "layer", "pool", "weights_sha256", "preprocess")}
    for option in ("normalize", "tta"):  # (keys from before them stay as they were)
        if config.get(option, "none") != "none":
            ident[option] = config[option]
    ident["export_format"] = EXPORT_FORMAT
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def fused_key(keys: Sequence[str]) -> str:
    """Identity of fused features (backbones concatenated in this order)."""
    keys = list(keys)
    if len(keys) == 1:
        return keys[0]
    return hashlib.sha256("+".join(keys).encode()).hexdigest()[:20]


# precision on CUDA: torch autocast to this dtype (features come back float32 either way).
AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


def check_cuda(device: str) -> None:
    """A clear error, not torch's traceback, when ``device`` is CUDA and torch sees none (or
    not that one)."""
    import torch

    if not str(device).startswith("cuda"):
        return
    if not torch.cuda.is_available():
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        # "devices", not "device": naming() would take the word for the parameter
        raise ConfigError(f"device={device!r}: torch {torch.__version__} ({build}) sees no CUDA "
                          f"devices here. Use device='cpu' (or 'auto'), or run on a machine with "
                          f"an NVIDIA GPU and its driver.", parameter="device")
    try:
        index = torch.device(device).index
    except RuntimeError:
        raise ConfigError(f"device must be 'cuda' or 'cuda:N'. Got {device!r}.",
                          parameter="device") from None
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r}: torch sees {torch.cuda.device_count()} CUDA "
                          f"GPU(s), numbered from 0.", parameter="device")


@contextlib.contextmanager
def exact_float32(device: Any) -> Iterator[None]:
    """Full float32 on CUDA: cuDNN's convolutions default to TF32, whose inputs keep a 10-bit
    mantissa as fp16's do, while fp32 features from CUDA share their cache entries with the ONNX
    graph's on CPU, and fine-tuning's saved model must reproduce the trained network's
    probabilities within 1e-4. Nothing to do on the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precision_key(key: str, precision: str) -> str:
    """The cache key of features computed in ``precision`` (fp32 keeps ``key``): mixed-precision
    features differ from fp32 ones in the third digit (fp16) or the second (bf16), so they are
    cached apart."""
    if precision == "fp32":
        return key
    return hashlib.sha256(f"{key}:{precision}".encode()).hexdigest()[:20]


class TorchEngine(FeatureEngine):
    """Eager PyTorch on a device (CUDA: channels_last, fp32 without TF32, or fp16/bf16 autocast;
    features come back float32).

    ``target`` is where the network runs: this process's ``device``, or, for ``engine="ray"``
    with ``device="cuda"``, the cluster's GPUs (the model stays on this process's CPU and each Ray
    actor moves it to its own GPU).
    """

    name = "torch"

    def __init__(self, image_model: Any, *, key: str, preprocess: PreprocessConfig,
                 num_features: int, device: str, precision: str = "fp32",
                 target: str | None = None) -> None:
        import torch

        check_cuda(device)
        self.device = torch.device(device)
        self.target = target or str(self.device)
        self.model = image_model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
            self.prefetch = 2  # the GPU computes while the CPU decodes the next batches
        self.fp32_key = self.key = key
        self.preprocess = preprocess
        self.num_features = num_features
        self.precision = "fp32"
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        """fp32, or autocast to fp16/bf16 on CUDA; the key changes with it."""
        if precision != "fp32" and precision not in AUTOCAST:
            raise ConfigError(f"A torch engine runs precision 'fp32', 'fp16' or 'bf16'. Got "
                              f"{precision!r}.", parameter="precision")
        if precision != "fp32" and not self.target.startswith("cuda"):
            # "mixed-precision": the bare word would be taken for the parameter by naming()
            raise ConfigError(f"precision={precision!r} is mixed-precision autocast, on a GPU: "
                              f"use it with device='cuda' (on a CPU: 'fp32', or 'int8').",
                              parameter=("precision", "device"))
        self.key = precision_key(self.fp32_key, precision)
        self.precision = precision

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        dtype = AUTOCAST.get(self.precision)
        mixed = (torch.autocast(self.device.type, dtype=getattr(torch, dtype)) if dtype
                 else exact_float32(self.device))
        with torch.inference_mode(), mixed:
            batch = torch.from_numpy(images).to(self.device, non_blocking=True)
            return self.model(batch).float().cpu().numpy()


def export_backbone_onnx(backbone: Any, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export ``ImageModel(backbone)`` to ONNX at ``path`` (written to a temp file, then renamed)."""
    import torch

    from graft.backbones import ImageModel

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = backbone.preprocess.size
    model = ImageModel(backbone).eval()
    if any(p.device.type != "cpu" for p in model.parameters()):
        # a CUDA engine's network (it shares the backbone): exported from a CPU copy, the
        # engine's stays where it is
        model = copy.deepcopy(model).cpu()
    dummy = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                tmp,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: BATCH_AXIS}, "features": {0: BATCH_AXIS}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def create_engine(
    backbone: Any,
    *,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    target: str | None = None,
) -> FeatureEngine:
    """The fastest engine for ``backbone`` here: torch on CUDA, else ONNX Runtime on CPU.

    The ONNX export is cached by backbone, layer, weights hash and preprocessing
    (``<cache>/onnx/<key>.onnx``), so it happens once per backbone.

    Args:
        device: ``"auto"``, ``"cpu"`` (ONNX Runtime), ``"cuda"`` / ``"cuda:N"`` or ``"torch"``
            (eager PyTorch on CPU, for comparisons).
        threads: ONNX Runtime intra-op threads (default: the share :func:`plan_threads` gives).
        target: For ``engine="ray"``: where the Ray actors run the network (``"cuda"``: the
            cluster's GPUs, the model kept on this process's CPU); default ``device``.
    """
    from graft.config import resolve_cache_dir

    config = backbone.config()
    key = backbone_key(config)
    common = {"key": key, "preprocess": backbone.preprocess, "num_features": backbone.num_features}
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") or device == "torch":
        from graft.backbones import ImageModel

        return TorchEngine(ImageModel(backbone), device="cpu" if device == "torch" else device,
                           target=target, **common)
    if device != "cpu":
        raise ConfigError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'torch'. "
            f"Got {device!r} instead.", parameter="device"
        )
    onnx_path = resolve_cache_dir(cache_dir) / "onnx" / f"{backbone.name}-{key}.onnx"
    if not onnx_path.is_file():
        export_backbone_onnx(backbone, onnx_path)
    return OnnxEngine(onnx_path, threads=threads, device="cpu", **common)
