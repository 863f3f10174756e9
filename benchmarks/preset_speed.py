"""What each registered backbone costs per image on this machine, at its recipe's input size.

Random weights (the architecture is what costs, not the values), exported to ONNX and run by
graft's CPU engine as extraction runs it: one image at a time, and batches of 16 (the best of a
few repeats each, after a warm-up). Decoding is not included: see extract_speed.py for that.

Usage: python benchmarks/preset_speed.py [--only TEXT[,TEXT...]] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from graft.backbones import create_backbone, list_backbones
from graft.features import create_engine


def _best_ms(engine, images: np.ndarray, repeats: int) -> float:
    engine(images)  # warm-up: the session, its threads and memory
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        engine(images)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated parts of backbone names")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    wanted = [part for part in args.only.split(",") if part]
    print(f"{'backbone':<46}{'input':>6}{'dim':>6}{'ms/img (1)':>12}{'ms/img (16)':>13}")
    with tempfile.TemporaryDirectory() as cache:
        for spec in list_backbones():
            if wanted and not any(part in spec.name for part in wanted):
                continue
            backbone = create_backbone(spec.name, weights="random")
            engine = create_engine(backbone, device="cpu", cache_dir=cache)
            size = backbone.preprocess.size
            rng = np.random.default_rng(0)
            single = rng.integers(0, 256, (1, *size, 3), dtype=np.uint8)
            batch = rng.integers(0, 256, (16, *size, 3), dtype=np.uint8)
            print(f"{spec.name:<46}{size[0]:>6}{backbone.num_features:>6}"
                  f"{_best_ms(engine, single, args.repeats):>12.1f}"
                  f"{_best_ms(engine, batch, args.repeats):>13.1f}", flush=True)


if __name__ == "__main__":
    main()
