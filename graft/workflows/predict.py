"""``graft predict``: stream top-k predictions for image files and folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from graft.config import PredictConfig, resolve_config
from graft.data.dataset import iter_image_files
from graft.inference.predictor import Prediction, Predictor, load

__all__ = ["PredictConfig", "predict"]


def predict(
    model_dir: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    config: PredictConfig | None = None,
    *,
    on_result: Callable[[int], object] | None = None,
    **options: Any,
) -> Iterator[Prediction]:
    """Stream top-k predictions for image files and folders (folders are walked lazily).

    Args:
        model_dir: A model directory from ``graft train`` or ``graft finetune``.
        paths: Image files and folders (walked recursively, in sorted order).
        config: A :class:`PredictConfig`; keyword ``options`` (its field names, e.g.
            ``top_k=3``, ``engine="ray"``) override its fields.
        on_result: Called with the number of results after every batch (progress bars).

    Yields:
        One :class:`~graft.inference.Prediction` per image, in order; an unreadable file gets
        ``error`` set instead of ``predictions``.
    """
    config = resolve_config(PredictConfig, config, options).validate()
    top_k = config.top_k
    predictor = load(model_dir, threads=config.threads, batch_size=config.batch_size)

    def files() -> Iterator[Path]:
        for path in paths:
            yield from iter_image_files(path)

    if config.engine == "ray":
        from graft.features.ray_engine import ray_predictions

        return _closing(predictor, ray_predictions(predictor, files(), top_k=top_k,
                                                   address=config.address, on_result=on_result))
    return _closing(predictor, predictor.predict_paths(files(), top_k=top_k, on_result=on_result))


def _closing(predictor: Predictor, results: Iterator[Prediction]) -> Iterator[Prediction]:
    """``results``; then (or when the caller stops early) the predictor's threads stop."""
    with predictor:
        yield from results
