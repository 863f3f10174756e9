"""Forward: a backbone graph (ONNX) mapping ``uint8`` NHWC images to float32 features.

Only onnxruntime and numpy: this is what a deployment runs. The training side
(:mod:`graft.features.engine`) adds a torch engine for CUDA and the ONNX export.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from graft.catalog import one_of
from graft.data.preprocess import PreprocessConfig
from graft.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BATCH_AXIS", "ONNX_DEVICES", "FeatureEngine", "OnnxEngine", "create_session",
           "onnx_providers"]

BATCH_AXIS = "batch"  # the name of the exported graphs' dynamic batch dimension
ONNX_DEVICES = ("auto", "cpu")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class FeatureEngine:
    """Maps a ``uint8`` (N, H, W, 3) batch to float32 (N, D) features."""

    key: str
    preprocess: PreprocessConfig
    num_features: int
    name: str = "engine"
    prefetch: int = 0  # batches to decode ahead: 0 on CPU (decode and network take turns)

    def __call__(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds beyond its settings (threads, sessions)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def onnx_providers(device: str = "auto", available: Sequence[str] | None = None) -> list[str]:
    """The ONNX Runtime execution providers for ``device``, most preferred first.

    ``"cpu"`` gets the CPU alone; ``"auto"`` puts CUDA first when ``available`` (default: what
    the installed onnxruntime offers) has it.

    Raises:
        ConfigError: For a ``device`` other than ``"auto"`` or ``"cpu"``.
    """
    one_of("device", device, ONNX_DEVICES)
    if device == "cpu":  # known without importing onnxruntime
        return [CPU]
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return [p for p in (CUDA, CPU) if p in available]


def create_session(path: str | os.PathLike, *, threads: int = 1,
                   pinned_batch: int | None = None, device: str = "auto") -> Any:
    """One ONNX Runtime session over a graph file, on the providers :func:`onnx_providers`
    gives ``device``.

    Raises:
        ModelError: When the file is not a graph ONNX Runtime can load.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spinning between runs: decode threads use the CPUs while the network waits for them
    # (benchmarks/extract_speed.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if pinned_batch is not None:
        options.add_free_dimension_override_by_name(BATCH_AXIS, int(pinned_batch))
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=onnx_providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc


class OnnxEngine(FeatureEngine):
    """ONNX Runtime over an exported backbone graph (input ``images``, output ``features``).

    One session per engine, created on first use (under a lock, so concurrent first calls cannot
    build two), so an engine whose features are all cached never loads its graph. On CPU the
    session's batch dimension is pinned to ``micro_batch`` images
    (``add_free_dimension_override_by_name``) and larger batches run in slices: with every shape
    static, ONNX Runtime folds the shape arithmetic of TF-"same" padding and plans memory once.
    Pinned to 1 image it runs nearly as fast as pinned to 32 (``benchmarks/onnx_threads.py
    --batch``), never pads, and one image costs one image, so it is the CPU default. A graph
    saved with a fixed batch (int8) runs in slices of that batch.

    On CPU the session runs each slice on one thread and a batch's slices are shared among
    ``threads`` callers (the calling thread and ``threads - 1`` workers), each calling the one
    session (``InferenceSession.run`` is thread-safe): a convolution split over threads waits at
    every layer for the slowest, whole images do not (``benchmarks/onnx_threads.py``); one image
    alone is slower on one thread, batches and servers gain. On CUDA the batch stays dynamic and
    runs as one call (``micro_batch`` None), and ``prefetch`` asks callers to decode ahead.

    ``micro_batch``, ``prefetch`` and ``providers`` are decided here from ``device`` and the
    providers onnxruntime offers, so they hold before the session exists. :meth:`close` (or a
    ``with`` block) stops the worker threads and drops the session; a later call loads it again.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        key: str,
        preprocess: PreprocessConfig,
        num_features: int,
        threads: int | None = None,
        micro_batch: int | None = 1,
        device: str = "auto",
    ) -> None:
        if micro_batch is not None and micro_batch < 1:
            raise ConfigError(f"micro_batch must be >= 1 or None. Got {micro_batch!r} instead.")
        self.path = Path(path)
        self.key = key
        self.preprocess = preprocess
        self.num_features = int(num_features)
        if threads is None:
            from graft.system import plan_threads

            threads = plan_threads().onnx
        self.threads = int(threads)
        self.device = device
        self.providers = onnx_providers(device)
        gpu = self.providers[0] == CUDA
        self.micro_batch = None if gpu else micro_batch
        self.prefetch = 2 if gpu else 0  # the GPU computes while the CPU decodes the next batches
        self._callers = 1 if self.micro_batch is None else self.threads  # slices run at once
        self._step = self.micro_batch  # images per session call: the graph's own fixed batch wins
        self._session: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        """The engine's one ONNX Runtime session (created on first use, once)."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._load()
        return self._session

    def _load(self) -> None:
        session = create_session(self.path, threads=self.threads // self._callers,
                                 pinned_batch=self.micro_batch, device=self.device)
        fixed = session.get_inputs()[0].shape[0]
        self._step = fixed if isinstance(fixed, int) else self.micro_batch
        if self._callers > 1:
            self._pool = ThreadPoolExecutor(max_workers=self._callers - 1,
                                            thread_name_prefix="graft-onnx")
        self._session = session  # published last: its settings are final

    def close(self) -> None:
        """Stop the worker threads and drop the session (call it when no call is running)."""
        with self._lock:
            pool, self._pool, self._session = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.num_features), np.float32)
        session = self.session
        name = session.get_inputs()[0].name
        step = self._step
        if step is None or len(images) == step:
            return session.run(None, {name: images})[0].astype(np.float32, copy=False)
        out = np.empty((len(images), self.num_features), np.float32)
        starts = list(range(0, len(images), step))

        def run_slices(chosen: list[int]) -> None:
            for start in chosen:
                chunk = images[start:start + step]
                if len(chunk) < step:  # pad the tail to the pinned size; keep only its rows
                    pad = np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                out[start:start + step] = session.run(None, {name: chunk})[0][:len(images) - start]

        pool = self._pool
        callers = min(self._callers, len(starts)) if pool is not None else 1
        shares = [starts[i::callers] for i in range(callers)]
        helpers = [pool.submit(run_slices, share) for share in shares[1:]] if pool else []
        run_slices(shares[0])
        for helper in helpers:
            helper.result()
        return out
