"""``graft serve`` settings, checked before anything is loaded."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from graft.catalog import DEFAULT_MAX_PIXELS
from graft.errors import ConfigError

__all__ = ["ServeConfig", "parse_models"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class ServeConfig:
    """Every option of ``graft serve``.

    Attributes:
        models: ``{name: model directory}``, served side by side.
        host, port: Where to listen (loopback unless told otherwise).
        max_batch_size: Most images in one ONNX Runtime call.
        max_delay_ms: Longest a batch waits for images still being decoded before it runs (it
            runs at once when nothing else is on the way).
        max_queue: Most images admitted and not yet answered, per model; more get 503.
        timeout_s: A request not answered by then gets 504.
        max_body_mb: Largest request body; larger gets 413.
        max_pixels: Largest image (width x height), checked from its header before decoding.
        threads: CPUs to use (default: all this process may use).
    """

    models: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 20.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None

    def validate(self) -> ServeConfig:
        if not self.models:
            raise ConfigError("graft serve needs at least one model directory.")
        lowest = {"max_batch_size": 1, "max_queue": 1, "port": 0, "max_delay_ms": 0,
                  "timeout_s": 1e-3, "max_body_mb": 1e-3, "max_pixels": 1}
        if self.threads is not None:
            lowest["threads"] = 1
        for name, low in lowest.items():
            value = getattr(self, name)
            if not math.isfinite(value) or value < low:
                raise ConfigError(f"{name} must be >= {low}. Got {value!r}.", parameter=name)
        if self.port > 65535:
            raise ConfigError(f"port must be <= 65535. Got {self.port!r}.", parameter="port")
        return self

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def parse_models(specs: list[str]) -> dict[str, Path]:
    """``DIR`` or ``NAME=DIR`` arguments -> ``{name: directory}`` (name: the directory's name)."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, path = Path(spec).resolve().name, spec
        if not _NAME.match(name):
            raise ConfigError(
                f"Model name {name!r} (from {spec!r}) is not usable in a URL. Use letters, digits, "
                f"'.', '_' or '-', e.g. 'graft serve flowers={path}'.")
        if name in models:
            raise ConfigError(f"Two models are named {name!r}. Name them apart: NAME=DIR.")
        models[name] = Path(path).expanduser()
    return models
