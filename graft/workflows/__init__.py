"""The jobs graft does, as library functions: extract, train, evaluate, predict.

Each stage lives in its own subpackage; these functions only wire them together, as named steps
over config dataclasses. The CLI and the HTTP server are thin layers over them. ``evaluate`` and
``predict`` import only the lean runtime; ``extract`` and ``train`` need the training extra.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EvaluateResult",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "extract",
    "predict",
    "train",
]

_WHERE = {
    "EvaluateResult": "evaluate",
    "evaluate": "evaluate",
    "predict": "predict",
    "extract": "extract",
    "TrainConfig": "train",
    "TrainResult": "train",
    "train": "train",
}


def __getattr__(name: str) -> Any:
    # Imported on first use, so `graft evaluate` never loads the training stack.
    if name in _WHERE:
        return getattr(importlib.import_module(f"graft.workflows.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'graft.workflows' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
