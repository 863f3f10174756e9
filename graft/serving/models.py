"""A served model: its predictor, its micro-batcher, and what it tells clients about itself.

Requests decode their images in a bounded thread pool, then queue them for the model's batch
loop, which runs one ONNX Runtime call at a time over everything queued (up to
``max_batch_size``). It starts a batch at once when no other image is still being decoded, and
otherwise waits at most ``max_delay_ms`` for those images to join. Every image passes through
the same :class:`graft.inference.Predictor` steps as ``graft predict``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.errors import ImageError
from graft.inference.images import preprocess
from graft.inference.predictor import Predictor, load
from graft.serving.config import ServeConfig
from graft.serving.errors import ServeError, image_error
from graft.serving.metrics import ServerMetrics

__all__ = ["SERVED_FORMATS", "ServedModel", "Timing"]

log = logging.getLogger("graft.serve")

# What the server decodes (by the bytes' own signature): the common photo formats. Pillow can
# open dozens more, some through external programs (EPS runs Ghostscript); uploads get none.
SERVED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG covers MPO


@dataclass
class Timing:
    """Where a request's time went, in seconds (the largest over its images)."""

    decode: float = 0.0
    queue: float = 0.0
    infer: float = 0.0

    def to_ms(self) -> dict[str, float]:
        return {k: round(v * 1000, 3) for k, v in
                (("decode", self.decode), ("queue", self.queue), ("infer", self.infer))}


@dataclass
class _Queued:
    inputs: list[np.ndarray]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class ServedModel:
    """One model directory, loaded once, answering batched predictions."""

    def __init__(self, name: str, directory: Path, config: ServeConfig, *,
                 decode_pool: Executor, infer_pool: Executor, metrics: ServerMetrics) -> None:
        self.name = name
        self.directory = directory
        self.config = config
        self.predictor: Predictor = load(directory, threads=config.threads,
                                         batch_size=config.max_batch_size)
        self.labels = self.predictor.labels
        self.ready = False
        self._decode_pool = decode_pool
        self._infer_pool = infer_pool
        self._metrics = metrics
        self._queue: deque[_Queued] = deque()
        self._wakeup = asyncio.Event()
        self._pending = 0   # images admitted and not yet answered
        self._decoding = 0  # of those, images still being decoded
        self._loop_task: asyncio.Task | None = None
        self.info = self._describe()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batch loop and run one warm-up inference; then the model is ready."""
        self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        gray = np.full((64, 64, 3), 127, np.uint8)
        await self._infer_one(gray)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass

    # -- prediction -----------------------------------------------------------------------
    async def predict(self, images: list[bytes]) -> tuple[np.ndarray, Timing]:
        """(N, C) probabilities for encoded images, in order, and where the time went.

        Raises:
            ServeError: 503 when the queue is full, 4xx for an image that cannot be decoded.
        """
        count = len(images)
        if count > self.config.max_queue:
            raise ServeError(413, f"{count} images in one request, more than model {self.name!r} "
                                  f"ever holds at once (max_queue={self.config.max_queue}). "
                                  f"Send them in smaller requests.", "too_many_images",
                             parameter="max_queue")
        if self._pending + count > self.config.max_queue:
            self._metrics.rejected.labels(reason="queue_full").inc(count)
            raise ServeError(
                503, f"Model {self.name!r} is at capacity ({self._pending} images in progress, "
                f"max_queue={self.config.max_queue}). Retry shortly.", "queue_full",
                headers={"Retry-After": "1"}, parameter="max_queue")
        self._pending += count
        self._metrics.queue_depth.labels(model=self.name).set(self._pending)
        try:
            inputs, decode_seconds = await self._decode_all(images)
            results = await asyncio.gather(*(self._enqueue(item) for item in inputs))
        finally:
            self._pending -= count
            self._metrics.queue_depth.labels(model=self.name).set(self._pending)
        timing = Timing(decode=decode_seconds, queue=max(r[1] for r in results),
                        infer=max(r[2] for r in results))
        self._metrics.observe(self.name, timing, count)
        return np.stack([r[0] for r in results]), timing

    async def _infer_one(self, image: np.ndarray) -> np.ndarray:
        inputs = preprocess(image, self.predictor.preprocess_configs)
        probabilities, _, _ = await self._enqueue(inputs)
        return probabilities

    async def _decode_all(self, images: list[bytes]) -> tuple[list[list[np.ndarray]], float]:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        self._decoding += len(images)
        configs, limit = self.predictor.preprocess_configs, self.config.max_pixels

        def decode(data: bytes) -> list[np.ndarray]:
            return preprocess(data, configs, max_pixels=limit, formats=SERVED_FORMATS)

        try:
            tasks = [loop.run_in_executor(self._decode_pool, decode, data) for data in images]
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._decoding -= len(images)
            self._wakeup.set()  # a batch waiting for these images need not wait any longer
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ImageError):
                raise image_error(outcome, index, len(images))
            if isinstance(outcome, Exception):  # a decoder's own failure: still the image's
                raise image_error(ImageError("upload", f"cannot decode ({type(outcome).__name__}: "
                                                       f"{outcome})"), index, len(images))
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes, time.perf_counter() - start

    async def _enqueue(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
        item = _Queued(inputs, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._wakeup.set()
        return await item.future

    async def _batch_loop(self) -> None:
        while True:
            try:
                await self._run_batches()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch loop of model %s failed; restarting it", self.name)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        limit, delay = self.config.max_batch_size, self.config.max_delay_ms / 1000
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for images still being decoded, never past max_delay after the oldest.
            deadline = self._queue[0].enqueued + delay
            while len(self._queue) < limit and self._decoding > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch: list[_Queued] = []
            while self._queue and len(batch) < limit:
                item = self._queue.popleft()
                if not item.future.done():  # a timed-out request's images are dropped
                    batch.append(item)
            if not batch:
                continue
            start = time.perf_counter()
            try:
                stacked = [np.stack([item.inputs[b] for item in batch])
                           for b in range(len(batch[0].inputs))]
                probabilities = await loop.run_in_executor(self._infer_pool,
                                                           self.predictor.forward, stacked)
            except Exception as error:  # noqa: BLE001 - the requests get it, the loop goes on
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            seconds = time.perf_counter() - start
            self._metrics.batch_size.labels(model=self.name).observe(len(batch))
            for row, item in zip(probabilities, batch):
                if not item.future.done():
                    item.future.set_result((row, start - item.enqueued, seconds))

    # -- description ----------------------------------------------------------------------
    def _describe(self) -> dict[str, Any]:
        config = self.predictor.config
        info: dict[str, Any] = {
            "name": self.name,
            "labels": self.labels,
            "backbone": " + ".join(b.name for b in config.backbones),
            "head": config.head.name,
            "precision": config.backbones[0].precision,
            "input_size": list(self.predictor.preprocess_configs[0].input_size),
        }
        metrics_file = self.directory / "metrics.json"
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            info["accuracy"] = metrics.get("accuracy")
            info["n_test"] = metrics.get("n_test")
        except (OSError, ValueError):
            info["accuracy"] = None
        return info
