"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from graft.serving.models import Timing

__all__ = ["ServerMetrics"]

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0)
_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests by endpoint and status; latency split into decode, queue and inference; batch
    sizes; queue depth; rejected images by reason."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("graft_requests", "HTTP requests answered",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("graft_request_seconds", "Whole request latency",
                                 ["endpoint"], buckets=_SECONDS, registry=r)
        self.decode = Histogram("graft_decode_seconds", "Decoding a request's images",
                                ["model"], buckets=_SECONDS, registry=r)
        self.queue = Histogram("graft_queue_seconds", "Waiting in the batch queue",
                               ["model"], buckets=_SECONDS, registry=r)
        self.inference = Histogram("graft_inference_seconds", "The ONNX Runtime call",
                                   ["model"], buckets=_SECONDS, registry=r)
        self.batch_size = Histogram("graft_batch_size", "Images per ONNX Runtime call",
                                    ["model"], buckets=_BATCHES, registry=r)
        self.queue_depth = Gauge("graft_queue_depth", "Images admitted and not yet answered",
                                 ["model"], registry=r)
        self.images = Counter("graft_images", "Images predicted", ["model"], registry=r)
        self.rejected = Counter("graft_images_rejected",
                                "Refused, by reason: each image for queue_full and timeout; one "
                                "per request for a request refused whole (a bad body, a bad "
                                "image, too many images)", ["reason"], registry=r)

    def observe(self, model: str, timing: Timing, images: int) -> None:
        self.decode.labels(model=model).observe(timing.decode)
        self.queue.labels(model=model).observe(timing.queue)
        self.inference.labels(model=model).observe(timing.infer)
        self.images.labels(model=model).inc(images)
