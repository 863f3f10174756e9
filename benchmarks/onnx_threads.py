"""The backbone graph alone: one image at a time on 2 intra-op threads, or 2 images at a time on
1 thread each (what `graft.inference.OnnxEngine` does on CPU), and the mixes in between.

The default backbone's exported graph (EfficientNet-Lite0, batch axis pinned as graft pins it),
random uint8 images, 200 images per configuration after a warm-up; img/s of the graph alone.

Usage: python benchmarks/onnx_threads.py [--images 200] [--batch 1]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def graph_path() -> str:
    from graft.catalog import DEFAULT_BACKBONE
    from graft.workflows._common import build_backbones

    (built,) = build_backbones(DEFAULT_BACKBONE, layer=None, weights=None, pool="avg",
                               image_size=None, device="cpu", cache_dir=None)
    return str(built.engine.path)


def session(path: str, threads: int, batch: int):
    from graft.inference.engine import create_session

    return create_session(path, threads=threads, pinned_batch=batch)


def rate(sess, batch: int, images: int, callers: int) -> float:
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)
    for _ in range(5):
        sess.run(None, {name: x})
    runs = images // callers // batch

    def work() -> None:
        for _ in range(runs):
            sess.run(None, {name: x})

    start = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(callers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return runs * callers * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    path = graph_path()
    print(f"{path}\nimages per call {args.batch}\n")
    print(f"{'intra-op threads':>17}{'callers at once':>17}{'img/s':>9}")
    for threads, callers in ((2, 1), (1, 1), (2, 2), (1, 2)):
        value = rate(session(path, threads, args.batch), args.batch, args.images, callers)
        print(f"{threads:>17}{callers:>17}{value:>9.1f}")


if __name__ == "__main__":
    main()
