"""Does ``graft train --augment-views K`` help? Test accuracy with K augmented views per training
image (flip, rotate, crop), default backbone (EfficientNet-Lite0), logreg head.

Usage: python benchmarks/augment_views.py [--views 0 2 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from graft.workflows import train

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, nargs="+", default=[0, 2, 4])
    args = parser.parse_args()
    print(f"{'dataset':<13}{'views':>6}{'train rows':>12}{'test acc':>10}{'seconds':>9}"
          f"{'re-run s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in ("flowers17", "hymenoptera"):
            for views in args.views:
                times = []
                for _ in range(2):  # the second run shows the cache at work
                    start = time.perf_counter()
                    result = train(SHARED / "datasets" / dataset, out=Path(tmp) / "m",
                                   cache_dir=Path(tmp) / "cache", augment_views=views,
                                   progress=False)
                    times.append(time.perf_counter() - start)
                m = result.metrics
                rows = m.get("augment_views", {}).get("n_train_rows", m["n_train"])
                print(f"{dataset:<13}{views:>6}{rows:>12}{m['accuracy']:>10.3f}"
                      f"{times[0]:>9.1f}{times[1]:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
