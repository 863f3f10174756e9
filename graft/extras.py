"""Optional parts of graft, and the message when one is missing.

The base install (``pip install graft``) predicts and evaluates: numpy, Pillow, onnxruntime and
h5py. Training needs ``graft[train]`` (torch, timm, scikit-learn, ONNX export, plots); the HTML
report of ``graft evaluate --report`` needs ``graft[report]``; ``graft serve`` needs
``graft[serve]``; images on ``s3://`` and other remote filesystems need ``graft[remote]``;
``graft[all]`` is everything.
"""

from __future__ import annotations

import importlib.util

from graft.errors import MissingExtraError

__all__ = ["EXTRAS", "require"]

# The modules each extra provides (checked without importing them).
EXTRAS = {
    "train": ("torch", "torchvision", "timm", "sklearn", "skl2onnx", "onnx", "matplotlib",
              "safetensors"),
    "report": ("matplotlib",),
    "serve": ("fastapi", "uvicorn", "prometheus_client", "multipart"),
    "ray": ("ray", "pyarrow"),
    "remote": ("pyarrow",),
}


def _missing(modules: tuple[str, ...]) -> list[str]:
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require(extra: str, modules: str | tuple[str, ...] | None = None,
            command: str | None = None, parameter: str | tuple[str, ...] = ()) -> None:
    """Raise :class:`MissingExtraError` naming the install command if ``extra`` is missing.

    Args:
        extra: The extra's name (``train``, ``report``).
        modules: The modules to check (default: all of the extra's).
        command: What needs it, for the message (e.g. ``"graft train"``, ``"engine='ray'"``).
        parameter: The parameters ``command`` names (see :class:`graft.errors.GraftError`).
    """
    if isinstance(modules, str):
        modules = (modules,)
    missing = _missing(tuple(modules or EXTRAS[extra]))
    if missing:
        what = command or "this part of graft"
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra, which is not installed (missing: "
            f"{', '.join(missing)}). Install it with: pip install 'graft[{extra}]'",
            parameter=parameter,
        )
