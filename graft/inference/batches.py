"""Decoding in worker threads, in order, in batches: in turns with the network on CPU, or a few
batches ahead of it on a GPU, there in worker processes when there are CPUs to feed it. Decoding
in threads holds the GIL too often to scale: on 16-CPU GPU machines, graft's 16 threads decoded
606-1,073 img/s where a plain pool of 16 processes reached 3,976-4,658, and `graft extract
--device cuda` ran 563 img/s beyond its fixed cost with threads, 2,039 with these processes
(benchmarks/gpu_extract.py; different machines)."""

from __future__ import annotations

import itertools
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graft.data.preprocess import PreprocessConfig
from graft.errors import ConfigError, DataError, ImageError
from graft.inference.images import preprocess

__all__ = ["PROCESS_CHUNK", "DecodedBatch", "iter_decoded_batches", "use_processes"]

PROCESS_CHUNK = 8  # images per task in a worker process: fewer round trips through the pool


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

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


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


def _decode_all(load: Callable[..., list[np.ndarray]], items: list[Any],
                configs: Sequence[PreprocessConfig]) -> list[list[np.ndarray] | str]:
    return [_decode(load, item, configs) for item in items]


def _decode_sources(sources: list[Any],
                    configs: Sequence[PreprocessConfig]) -> list[list[np.ndarray] | str]:
    """A worker process's task: local image files -> prepared arrays (or a failure's reason)."""
    return _decode_all(preprocess, sources, configs)


def _worker_start() -> None:
    """A decode process leaves Ctrl-C to its parent (which stops the pool), instead of printing
    a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def use_processes(workers: int, prefetch: int, source: Any) -> bool:
    """Whether to decode in processes: when the network runs ahead on a GPU (``prefetch``),
    there are CPUs enough to feed it (3 or more workers), and the images (``source``, one of
    them) are local files (remote reads wait on the network, where threads do)."""
    from graft.data.storage import is_uri

    return prefetch > 0 and workers > 2 and not is_uri(str(source))


def iter_decoded_batches(
    items: Iterable[Any],
    configs: Sequence[PreprocessConfig],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    prefetch: int = 0,
    source_of: Callable[[Any], Any] = lambda item: item,
    load: Callable[[Any, Sequence[PreprocessConfig]], list[np.ndarray]] | None = None,
    processes: bool = False,
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
        processes: Decode in ``workers`` processes, forked where the system can (else
            spawned), ``PROCESS_CHUNK`` images a task (``source_of(item)`` must be a local file,
            and ``load`` not given), for a GPU that threads cannot keep busy: see
            :func:`use_processes`.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1. Got {batch_size!r} instead.")
    if workers is None:
        from graft.inference.threads import plan_threads

        workers = plan_threads().decode
    if processes and (load is not None or workers < 1):
        raise ValueError("Decoding in processes reads files by path: no load function, and at "
                         "least one worker.")
    ahead = batch_size * (1 + max(0, int(prefetch)))
    configs = list(configs)
    if load is None:
        def load(item: Any, configs: Sequence[PreprocessConfig]) -> list[np.ndarray]:
            return preprocess(source_of(item), configs)
    if processes:
        # Forked where the system can (as torch's DataLoader workers are): the children only
        # decode (PIL, numpy) and never touch the parent's CUDA. Spawned children would run the
        # caller's script again (as __mp_main__) if it calls graft without a __main__ guard.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_start,
                                   mp_context=multiprocessing.get_context(method))
    elif workers > 0:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-decode")
    else:
        pool = _Inline()
    per_task = PROCESS_CHUNK if processes else 1
    try:
        pending: deque = deque()  # (item, the future of its task, its place in the task)
        iterator = iter(items)

        def submit(limit: int) -> None:
            # whole tasks (up to per_task - 1 items past the limit), never tasks of one image
            # as each taken item frees a place
            while len(pending) < limit:
                chunk = list(itertools.islice(iterator, per_task))
                if not chunk:
                    return
                future = (pool.submit(_decode_sources, [source_of(i) for i in chunk], configs)
                          if processes else pool.submit(_decode_all, load, chunk, configs))
                pending.extend((item, future, place) for place, item in enumerate(chunk))

        while True:
            batch, arrays = DecodedBatch(), []
            while len(arrays) < batch_size:
                # Without prefetch, submit only what this batch still needs, once the last
                # submissions are done: workers are idle while the caller runs the network.
                submit(ahead if prefetch else (batch_size - len(arrays) if not pending else 0))
                if not pending:
                    break
                item, future, place = pending.popleft()
                result = future.result()[place]
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
    except BrokenProcessPool as exc:  # from a result, or from submitting to the broken pool
        # (Not always: a worker killed while it sends a result leaves half a message in the
        # pool's result pipe, and CPython's ProcessPoolExecutor then waits for the rest for
        # ever. A test that killed the workers mid-run hung in 2 of 6 tries, so none is kept.)
        raise DataError(f"A process decoding images stopped ({exc}); was it killed for "
                        f"memory? Run again with fewer --threads.") from None
    finally:  # the work queued for an error or a generator closed early is dropped
        pool.shutdown(wait=True, cancel_futures=True)
