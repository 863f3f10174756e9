"""Decoding in worker threads, in order, in batches: in turns with the network on CPU, or a few
batches ahead of it on a GPU, there in worker processes when there are CPUs to feed it. Decoding
in threads holds the GIL too often to feed a GPU (benchmarks/gpu_extract.py); the processes
write their images into shared memory (see :class:`_Slots`)."""

from __future__ import annotations

import contextlib
import itertools
import mmap
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


class _Slots:
    """Memory shared with forked decode processes, a slot per image in flight: an anonymous
    shared mapping made before the fork, so each process writes its images straight into the
    slots the parent gave it and sends back only a short message (``None``, or why an image
    failed). A short message is one write to the pipe, so a process killed mid-run cannot leave
    half of one behind (CPython's ProcessPoolExecutor would wait for the rest for ever: a test
    that killed the workers hung in 2 of 6 tries when the arrays themselves went through it)."""

    def __init__(self, configs: Sequence[PreprocessConfig], count: int) -> None:
        self.shapes = [(*config.size, 3) for config in configs]
        self.sizes = [int(np.prod(shape)) for shape in self.shapes]
        self.stride = sum(self.sizes)
        self.memory = mmap.mmap(-1, max(1, self.stride * count))
        self.free = deque(range(count))

    def views(self, slot: int) -> list[np.ndarray]:
        """The slot's image for each config (views of the shared memory, not copies)."""
        views, offset = [], slot * self.stride
        for shape, size in zip(self.shapes, self.sizes):
            views.append(np.frombuffer(self.memory, np.uint8, size, offset).reshape(shape))
            offset += size
        return views


_SHARED: dict[int, _Slots] = {}  # by token: what the forked processes inherit and write into
_TOKENS = itertools.count()


def _decode_into(token: int, sources: list[Any], slots: list[int],
                 configs: Sequence[PreprocessConfig]) -> list[str | None]:
    """A worker process's task: local image files -> their slots (or a failure's reason)."""
    shared = _SHARED[token]
    reasons: list[str | None] = []
    for source, slot in zip(sources, slots):
        result = _decode(preprocess, source, configs)
        if isinstance(result, str):
            reasons.append(result)
            continue
        for view, array in zip(shared.views(slot), result):
            view[...] = array
        reasons.append(None)
    return reasons


def _worker_start() -> None:
    """A decode process leaves Ctrl-C to its parent (which stops the pool), instead of printing
    a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def use_processes(workers: int, prefetch: int, source: Any) -> bool:
    """Whether to decode in processes: when the network runs ahead on a GPU (``prefetch``),
    there are CPUs enough to feed it (3 or more workers), the images (``source``, one of them)
    are local files (remote reads wait on the network, where threads do), and the system can
    fork."""
    from graft.data.storage import is_uri

    return (prefetch > 0 and workers > 2 and not is_uri(str(source))
            and "fork" in multiprocessing.get_all_start_methods())


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
        processes: Decode in ``workers`` forked processes, ``PROCESS_CHUNK`` images a task,
            written into shared memory (``source_of(item)`` must be a local file, and ``load``
            not given), for a GPU that threads cannot keep busy: see :func:`use_processes`.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1. Got {batch_size!r} instead.",
                          parameter="batch_size")
    if workers is None:
        from graft.system import plan_threads

        workers = plan_threads().decode
    if processes and (load is not None or workers < 1
                      or "fork" not in multiprocessing.get_all_start_methods()):
        raise ValueError("Decoding in processes reads files by path: no load function, at "
                         "least one worker, and a system that can fork.")
    if load is None:
        def load(item: Any, configs: Sequence[PreprocessConfig]) -> list[np.ndarray]:
            return preprocess(source_of(item), configs)
    decoding = _Decoding(items, list(configs), load, source_of, workers=workers,
                         processes=processes, batch_size=batch_size, prefetch=prefetch)
    try:
        while (batch := decoding.next_batch()) is not None:
            yield batch
    except BrokenProcessPool as exc:  # from a result, or from submitting to the broken pool
        raise DataError(f"A process decoding images stopped ({exc}); was it killed for "
                        f"memory? Run again with fewer threads.", parameter="threads") from None
    finally:  # the work queued for an error or a generator closed early is dropped
        decoding.close()


class _Decoding:
    """One :func:`iter_decoded_batches` call's pool, the items submitted to it in order, and
    (decoding in processes) the shared-memory slots the images are written into."""

    def __init__(self, items: Iterable[Any], configs: list[PreprocessConfig],
                 load: Callable[[Any, Sequence[PreprocessConfig]], list[np.ndarray]],
                 source_of: Callable[[Any], Any], *, workers: int, processes: bool,
                 batch_size: int, prefetch: int) -> None:
        self.configs, self.load, self.source_of = configs, load, source_of
        self.batch_size, self.prefetch = batch_size, prefetch
        self.ahead = batch_size * (1 + max(0, int(prefetch)))
        self.per_task = PROCESS_CHUNK if processes else 1
        self.token, self.shared = next(_TOKENS), None
        # (item, the future of its task, its place in the task, its slot with processes)
        self.pending: deque = deque()
        self.iterator = iter(items)
        if processes:
            # Forked (as torch's DataLoader workers are): the children only decode (PIL, numpy)
            # and never touch the parent's CUDA; they inherit the shared slots. (Spawned
            # children would run the caller's script again, as __mp_main__, if it calls graft
            # without a __main__ guard.) Slots: what may be pending, plus the batch being
            # gathered.
            self.shared = _SHARED[self.token] = _Slots(
                configs, self.ahead + self.per_task + batch_size)
            self.pool: Any = ProcessPoolExecutor(
                max_workers=workers, initializer=_worker_start,
                mp_context=multiprocessing.get_context("fork"))
        elif workers > 0:
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graft-decode")
        else:
            self.pool = _Inline()

    def submit(self, limit: int) -> None:
        """Queue items until ``limit`` are pending: whole tasks (up to ``per_task - 1`` items
        past the limit), never tasks of one image as each taken item frees a place."""
        shared = self.shared
        while len(self.pending) < limit:
            room = min(self.per_task, len(shared.free)) if shared else self.per_task
            chunk = list(itertools.islice(self.iterator, room))
            if not chunk:
                return
            if shared:
                slots = [shared.free.popleft() for _ in chunk]
                future = self.pool.submit(_decode_into, self.token,
                                          [self.source_of(i) for i in chunk], slots, self.configs)
            else:
                slots = [None] * len(chunk)
                future = self.pool.submit(_decode_all, self.load, chunk, self.configs)
            self.pending.extend((item, future, place, slot)
                                for place, (item, slot) in enumerate(zip(chunk, slots)))

    def next_batch(self) -> DecodedBatch | None:
        """The next batch in order (None when every item is done)."""
        batch, arrays, used = DecodedBatch(), [], []
        while len(arrays) < self.batch_size:
            # Without prefetch, submit only what this batch still needs, once the last
            # submissions are done: workers are idle while the caller runs the network.
            self.submit(self.ahead if self.prefetch else
                        (self.batch_size - len(arrays) if not self.pending else 0))
            if not self.pending:
                break
            item, future, place, slot = self.pending.popleft()
            result = future.result()[place]
            if isinstance(result, str):
                batch.failures.append((item, result))
                if self.shared:
                    self.shared.free.append(slot)
            else:
                batch.items.append(item)
                arrays.append(self.shared.views(slot) if self.shared else result)
                used.append(slot)
        if not arrays and not batch.failures:
            return None
        batch.images = [
            np.stack([prepared[j] for prepared in arrays]) if arrays
            else np.zeros((0, *config.size, 3), np.uint8)
            for j, config in enumerate(self.configs)
        ]
        if self.shared:  # copied out by the stacking: the slots take new images
            self.shared.free.extend(used)
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.shared:
            del _SHARED[self.token]
            with contextlib.suppress(BufferError):  # a view still held elsewhere: GC closes it
                self.shared.memory.close()
