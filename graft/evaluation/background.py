"""Write the report in a forked process that imports matplotlib while training goes on.

Importing matplotlib and drawing the figures is a large part of a warm ``graft train``
(``benchmarks/retrain_warm.py``), all of it on one core while the others wait. A :class:`ReportWriter` forks one worker when
training starts (Linux, and only while this process runs a single thread, so the fork copies
no lock another thread holds); the worker imports the report module during feature loading and
the head fit, then draws when :meth:`ReportWriter.write` hands it the results. Elsewhere, or if
the worker dies, the report is written in this process: same function, same files.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

    from graft.evaluation.inputs import ReportInputs

__all__ = ["ReportWriter"]


def _prepare() -> None:
    # Ctrl-C is the parent's to handle: it stops the run, and shutting down ends this worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import graft.evaluation.report  # noqa: F401  (matplotlib's import is what takes the time)


def _write(directory: str | os.PathLike, inputs: ReportInputs) -> Path:
    from graft.evaluation.report import write_report

    return write_report(directory, inputs)


class ReportWriter:
    """``write_report`` with its imports done ahead, in a forked worker where that is safe."""

    def __init__(self, enabled: bool = True) -> None:
        self._executor: ProcessPoolExecutor | None = None
        if enabled and sys.platform.startswith("linux") and threading.active_count() == 1:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("fork"),
                initializer=_prepare)
            self._executor.submit(int)  # forks the worker now, so its imports start now

    def write(self, directory: str | os.PathLike, inputs: ReportInputs) -> Path:
        """Write ``report.html`` and its figures (see ``write_report``)."""
        if self._executor is not None:
            try:
                return self._executor.submit(_write, directory, inputs).result()
            except BrokenProcessPool:  # the worker was killed: draw here instead
                self.close()
        return _write(directory, inputs)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
