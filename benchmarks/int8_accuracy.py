"""int8 vs fp32 backbone (EfficientNet-Lite0): cold extraction speed and held-out accuracy.

`graft train` with the logreg head on flowers17 (hash split, 20 % test) and hymenoptera (its val
folder as the test), once with --precision fp32 and once with --precision int8 (quantized with ONNX
Runtime, calibrated on up to 200 of that dataset's training images), each from an empty feature
cache. img/s is the extraction rate of that run (decode + network, whole dataset); "train s" is
the whole `graft.train` call (int8: the one-time quantization included).

Usage: python benchmarks/int8_accuracy.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from graft.workflows import train

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    print(f"{'dataset':<13}{'precision':<11}{'img/s':>8}{'test acc':>10}{'train s':>9}")
    for dataset in ("flowers17", "hymenoptera"):
        with tempfile.TemporaryDirectory() as cache:
            train(SHARED / "datasets" / dataset, out=Path(cache) / "warm", cache_dir=cache,
                  progress=False)  # exports the fp32 graph once, as any earlier run would
            for precision in ("fp32", "int8"):
                features = Path(cache) / "features"
                for entry in features.iterdir() if features.exists() else ():
                    for shard in entry.iterdir():
                        shard.unlink()
                start = time.perf_counter()
                result = train(SHARED / "datasets" / dataset, out=Path(cache) / precision,
                               cache_dir=cache, precision=precision, progress=False)
                total = time.perf_counter() - start
                print(f"{dataset:<13}{precision:<11}"
                      f"{result.extraction.images_per_second:>8.1f}"
                      f"{result.metrics['accuracy']:>10.3f}{total:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
