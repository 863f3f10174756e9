"""How many threads graft runs: decode workers plus ONNX Runtime's intra-op threads never exceed
the CPUs this process may use (its affinity mask and its cgroup's CPU quota, not the machine's
core count), so the two never fight for the same cores.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from graft.errors import ConfigError

__all__ = ["ThreadPlan", "available_cpus", "plan_threads"]

_log = logging.getLogger("graft")
_logged: set[tuple[int, int, int]] = set()
_logged_lock = threading.Lock()


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max``, else v1 ``cfs_quota_us``), if any."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    """The CPUs this process may run on: affinity mask, capped by the cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for one pipeline: ``decode`` image workers (0: decode inline) and ``onnx``
    intra-op threads; ``decode + onnx == cpus``."""

    decode: int
    onnx: int
    cpus: int

    def describe(self) -> str:
        decode = f"{self.decode} decode thread(s)" if self.decode else "decoding inline"
        return f"{self.cpus} CPU(s): {decode}, {self.onnx} ONNX Runtime thread(s)"


def plan_threads(threads: int | None = None, *, decode: int | None = None) -> ThreadPlan:
    """Split ``threads`` CPUs (default: all available) between decoding and the network.

    The network gets the larger share: decoding one 224-pixel crop (JPEG draft decode) costs a
    fraction of a forward pass. With 2 CPUs: 1 decode worker and 1 ONNX Runtime thread; with 1,
    no decode worker (images are decoded inline, between forward passes); from 3, a third
    decode. ``decode`` fixes the decode workers; the rest go to ONNX Runtime. Either way
    ``decode + onnx == cpus``. The plan is logged once per process.
    """
    cpus = available_cpus()
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"--threads must be >= 1. Got {threads!r}.")
        cpus = int(threads)
    if decode is None:
        decode = 0 if cpus == 1 else 1 if cpus == 2 else cpus // 3
    elif int(decode) < 0:
        raise ConfigError(f"The number of decode workers must be >= 0. Got {decode!r}.")
    decode = min(int(decode), cpus - 1)
    plan = ThreadPlan(decode=decode, onnx=cpus - decode, cpus=cpus)
    key = (plan.decode, plan.onnx, plan.cpus)
    with _logged_lock:
        if key not in _logged:
            _logged.add(key)
            _log.info("threads: %s", plan.describe())
    return plan
