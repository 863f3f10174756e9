"""What this process may use: its CPUs (affinity mask and cgroup CPU quota, not the machine's core
count), its memory (under the cgroup's limit), and the threads graft runs on them. Decode workers
and the network's threads take turns, so the two never fight for the same cores.

A base module (the standard library and graft.errors only): data, features, heads, training and serving all size their
pools from it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from graft.errors import ConfigError

__all__ = ["ThreadPlan", "available_cpus", "available_memory", "plan_threads"]

_log = logging.getLogger("graft")
_logged: set = set()
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


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup's memory limit, not counting reclaimable file cache (as the
    kubelet's working set): v2 ``memory.max`` - (``memory.current`` - ``inactive_file``), else
    v1 ``limit_in_bytes`` - (``usage_in_bytes`` - ``total_inactive_file``); None if no limit."""
    for folder, limit_name, usage_name, inactive_key in (
            ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
             "total_inactive_file")):
        try:
            limit_text = Path(folder, limit_name).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:  # v1 writes a huge number
                return None
            used = int(Path(folder, usage_name).read_text())
            for line in Path(folder, "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive_key:
                    used -= int(value)
            return max(0, int(limit_text) - max(0, used))
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of memory this process could still take: the kernel's ``MemAvailable``, capped by
    the room under the cgroup's memory limit (v1 or v2); None if unknown."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


@dataclass(frozen=True)
class ThreadPlan:
    """Threads for one pipeline: ``decode`` image workers and ``onnx`` network threads (on CPU,
    that many images run through the one ONNX Runtime session at once, one thread each).

    The two take turns (decode a batch, then run the network on it), so at any moment at most
    ``cpus`` threads are busy: each phase may use every CPU without the two fighting over them.
    """

    decode: int
    onnx: int
    cpus: int

    def describe(self) -> str:
        return (f"{self.cpus} CPU(s): decoding with {self.decode} thread(s), then the network "
                f"on {self.onnx} image(s) at a time, in turn")


def plan_threads(threads: int | None = None) -> ThreadPlan:
    """The threads for ``threads`` CPUs (default: all this process may use).

    Decoding and the network alternate, batch by batch, so each gets every CPU in its turn and
    they never compete: at most ``cpus`` threads are busy at once, which beat overlapping them
    (``benchmarks/extract_speed.py``). The plan is logged once per process.
    """
    cpus = available_cpus()
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1. Got {threads!r}.", parameter="threads")
        cpus = int(threads)
    plan = ThreadPlan(decode=cpus, onnx=cpus, cpus=cpus)
    with _logged_lock:
        if plan not in _logged:
            _logged.add(plan)
            _log.info("threads: %s", plan.describe())
    return plan
