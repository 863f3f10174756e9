"""The jobs graft does, as library functions: extract, train, evaluate, predict.

Each stage lives in its own subpackage; these functions only wire them together, as named steps
over config dataclasses. The CLI and the HTTP server are thin layers over them. ``evaluate`` and
``predict`` import only the lean runtime; ``extract`` and ``train`` need the training extra.
"""

from __future__ import annotations

from graft._lazy import lazy_exports

__all__ = [
    "EvaluateConfig",
    "EvaluateResult",
    "ExtractConfig",
    "PredictConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "extract",
    "predict",
    "train",
]

# Imported on first use, so `graft evaluate` never loads the training stack.
__getattr__, __dir__ = lazy_exports(__name__, {
    "EvaluateResult": "graft.workflows.evaluate",
    "evaluate": "graft.workflows.evaluate",
    "predict": "graft.workflows.predict",
    "extract": "graft.workflows.extract",
    "TrainConfig": "graft.config",
    "EvaluateConfig": "graft.config",
    "ExtractConfig": "graft.config",
    "PredictConfig": "graft.config",
    "TrainResult": "graft.workflows.train",
    "train": "graft.workflows.train",
})
