"""``graft predict``: stream top-k predictions for image files and folders."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from graft.data.dataset import iter_image_files
from graft.errors import ConfigError
from graft.inference.predictor import Prediction, load

__all__ = ["predict"]


def predict(
    model_dir: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    threads: int | None = None,
    on_result=None,
    engine: str = "local",
    address: str | None = None,
) -> Iterator[Prediction]:
    """Stream top-k predictions for image files and folders (folders are walked lazily).

    Args:
        model_dir: A model directory from ``graft train`` or ``graft finetune``.
        paths: Image files and folders (walked recursively, in sorted order).
        on_result: Called with the number of results after every batch (progress bars).
        engine: ``"local"`` (this process) or ``"ray"`` (the backbones run on the Ray cluster at
            ``address``; the same predictions, in the same order).

    Yields:
        One :class:`~graft.inference.Prediction` per image, in order; an unreadable file gets
        ``error`` set instead of ``predictions``.
    """
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be 'local' or 'ray'. Got {engine!r}.")
    predictor = load(model_dir, threads=threads, batch_size=batch_size)

    def files() -> Iterator[Path]:
        for path in paths:
            yield from iter_image_files(path)

    if engine == "ray":
        from graft.scale.ray_engine import ray_predictions

        return ray_predictions(predictor, files(), top_k=top_k, address=address,
                               on_result=on_result)
    return predictor.predict_paths(files(), top_k=top_k, on_result=on_result)
