"""A warm re-run of `graft train` on hymenoptera, as a whole process (what a user waits for).

The first run fills the feature cache (and is not counted); the next ``--runs`` re-train with
every feature cached: imports, head grid search, saving, scoring with the saved model, report.
Usage: python benchmarks/retrain_warm.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = SHARED / "datasets" / "hymenoptera"
    command = [sys.executable, "-m", "graft"]  # no version-manager shim in the timing
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        walls = []
        for _ in range(args.runs + 1):
            start = time.perf_counter()
            subprocess.run([*command, "train", str(data), "--out", str(out), "-q"], check=True,
                           capture_output=True)
            walls.append(time.perf_counter() - start)
        report = (out / "report.html").is_file()
    walls = walls[1:]
    print(f"warm `graft train` of hymenoptera, {args.runs} runs, whole process "
          f"(python -m graft); report written: {report}\n  median {statistics.median(walls):.2f} s   min {min(walls):.2f} s   "
          f"max {max(walls):.2f} s")


if __name__ == "__main__":
    main()
