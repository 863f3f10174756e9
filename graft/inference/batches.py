"""Decoding in worker threads, in order, in batches: in turns with the network on CPU, or a few
batches ahead of it on a GPU."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.data.preprocess import PreprocessConfig
from graft.errors import ConfigError, ImageError
from graft.inference.images import preprocess

__all__ = ["DecodedBatch", "iter_decoded_batches"]

_END = object()


class _Inline:
    """A stand-in for a thread pool that runs each job when submitted (``workers=0``)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


@dataclass
class DecodedBatch:
    """Images decoded and resized for the network, plus the items that failed and why."""

    items: list[Any] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)  # one (N, H, W, 3) array per config
    failures: list[tuple[Any, str]] = field(default_factory=list)


def _decode(load: Callable[..., list[np.ndarray]], item: Any,
            configs: Sequence[PreprocessConfig]) -> list[np.ndarray] | str:
    try:
        return load(item, configs)
    except ImageError as exc:
        return exc.reason


def iter_decoded_batches(
    items: Iterable[Any],
    configs: Sequence[PreprocessConfig],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 0,
    source_of: Callable[[Any], Any] = lambda item: item,
    load: Callable[[Any, Sequence[PreprocessConfig]], list[np.ndarray]] | None = None,
) -> Iterator[DecodedBatch]:
    """Decode ``items`` in worker threads and yield them in order, in batches.

    Each image is decoded once and prepared for every config (``batch.images[j]`` is for
    ``configs[j]``), by ``load(item, configs)`` if given, else by :func:`preprocess` of
    ``source_of(item)``. Memory stays flat however many items there are. Items that fail to
    decode are returned in ``failures`` with the reason, never dropped silently.

    Args:
        workers: Decode threads (default: :func:`plan_threads`); 0 decodes in the calling thread.
        prefetch: Batches decoded ahead while the caller works on the last one. 0 (the CPU
            default) decodes a batch only when asked for it, so decoding and the caller's work
            (the network) take turns and never compete for the CPUs; use 1-2 when the network
            runs on a GPU.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1. Got {batch_size!r} instead.")
    if workers is None:
        from graft.inference.threads import plan_threads

        workers = plan_threads().decode
    ahead = batch_size * (1 + max(0, int(prefetch)))
    configs = list(configs)
    if load is None:
        def load(item: Any, configs: Sequence[PreprocessConfig]) -> list[np.ndarray]:
            return preprocess(source_of(item), configs)
    with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-decode")
          if workers > 0 else _Inline()) as pool:
        pending: deque = deque()
        iterator = iter(items)

        def submit(limit: int) -> None:
            while len(pending) < limit:
                item = next(iterator, _END)
                if item is _END:
                    return
                pending.append((item, pool.submit(_decode, load, item, configs)))

        while True:
            batch, arrays = DecodedBatch(), []
            while len(arrays) < batch_size:
                # Without prefetch, submit only what this batch still needs, once the last
                # submissions are done: workers are idle while the caller runs the network.
                submit(ahead if prefetch else (batch_size - len(arrays) if not pending else 0))
                if not pending:
                    break
                item, future = pending.popleft()
                result = future.result()
                if isinstance(result, str):
                    batch.failures.append((item, result))
                else:
                    batch.items.append(item)
                    arrays.append(result)
            if not arrays and not batch.failures:
                return
            batch.images = [
                np.stack([prepared[j] for prepared in arrays]) if arrays
                else np.zeros((0, *config.size, 3), np.uint8)
                for j, config in enumerate(configs)
            ]
            yield batch
