"""Prediction latency with the default backbone (EfficientNet-Lite0, logreg head):

  cli      `graft predict MODEL one.jpg` in a fresh process, wall time (what a user waits for:
           interpreter start, imports, model load, decode, forward), 7 runs
  python   `predictor(path)` in a process that already did `graft.load(MODEL)`, 200 calls
  steps    the same call split into preprocess (decode + resize), backbone, head

The model is trained once on hymenoptera (../shared or $GRAFT_SHARED) into a temporary folder.
Usage: python benchmarks/predict_latency.py [--runs 7] [--calls 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _ms(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"median {statistics.median(ordered) * 1000:7.1f} ms   min {ordered[0] * 1000:7.1f} ms"
            f"   p90 {p90 * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    data = SHARED / "datasets" / "hymenoptera"
    image = sorted((data / "val" / "bees").glob("*.jpg"))[0]
    graft_cmd = shutil.which("graft") or f"{sys.executable} -m graft"
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        subprocess.run([*graft_cmd.split(), "train", str(data), "--out", str(model), "-q"],
                       check=True, capture_output=True)
        walls = []
        for _ in range(args.runs + 1):
            start = time.perf_counter()
            subprocess.run([*graft_cmd.split(), "predict", str(model), str(image)], check=True,
                           capture_output=True)
            walls.append(time.perf_counter() - start)
        walls = walls[1:]  # the first run warms the OS file cache

        import numpy as np

        import graft

        start = time.perf_counter()
        predictor = graft.load(model)
        load_seconds = time.perf_counter() - start
        for _ in range(5):
            predictor(image)
        calls, pre, backbone, head = [], [], [], []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            predictor(image)
            t1 = time.perf_counter()
            prepared = [array[None] for array in predictor.preprocess(image)]
            t2 = time.perf_counter()
            features = predictor.features(prepared)
            t3 = time.perf_counter()
            predictor.probabilities_from_features(features)
            t4 = time.perf_counter()
            calls.append(t1 - t0)
            pre.append(t2 - t1)
            backbone.append(t3 - t2)
            head.append(t4 - t3)
        assert np.isfinite(features).all()
    print(f"model: {predictor!r}; image: {image.name}; {os.cpu_count()} CPU cores; "
          f"threads: {predictor.threads.describe()}\n")
    print(f"graft predict MODEL one.jpg (fresh process) {_ms(walls)}")
    print(f"graft.load(MODEL)                          {load_seconds * 1000:7.1f} ms (once)")
    print(f"predictor(path), in process                {_ms(calls)}")
    print(f"  preprocess (decode + resize)             {_ms(pre)}")
    print(f"  backbone graph                           {_ms(backbone)}")
    print(f"  head graph                               {_ms(head)}")


if __name__ == "__main__":
    main()
