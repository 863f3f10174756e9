"""The CIFAR-10-shaped workflow: 10,000 generated 32x32 images in a .npz, extracted and trained.

The images (10 classes of noisy colour fields with a random square, generated here; nothing is
committed) go into ``data.npz`` as ``x`` (N, 32, 32, 3) uint8, ``y`` and ``split``. Then, each as
its own process with an empty feature cache: ``graft extract data.npz`` (which first writes the
arrays as PNG files into the cache, once), the same again (everything cached), and ``graft train
data.npz``. Default backbone (EfficientNet-Lite0, the 32x32 images upsampled to 224x224).

Usage: python benchmarks/cifar_shaped.py [--images 10000]
The real CIFAR-10 (binary version): graft data fetch cifar10 --to data, then
python benchmarks/cifar_shaped.py --real data/cifar10 (60,000 images; about 10 minutes of
extraction on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    hues = rng.uniform(40, 215, (10, 3))
    x = np.clip(hues[labels][:, None, None, :] + rng.normal(0, 45, (count, 32, 32, 3)), 0, 255)
    for i in range(count):  # a random bright square: structure for the network to see
        r, c = rng.integers(0, 24, 2)
        x[i, r:r + 8, c:c + 8] = 255 - x[i, r:r + 8, c:c + 8]
    split = np.where(rng.random(count) < 0.2, "test", "train")
    return x.astype(np.uint8), labels, split


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--real", default=None, help="a cifar-10-batches-bin folder instead")
    args = parser.parse_args()
    graft = [sys.executable, "-m", "graft"]
    with tempfile.TemporaryDirectory(prefix="graft-cifar-") as tmp:
        work = Path(tmp)
        if args.real:
            data, count = Path(args.real), 60_000
        else:
            x, y, split = generate(args.images)
            data, count = work / "data.npz", len(x)
            np.savez(data, x=x, y=y, split=split)
        env = {**os.environ, "GRAFT_CACHE_DIR": str(work / "cache")}
        onnx = Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graft")) / "onnx"
        if onnx.is_dir():  # the exported graph: timing the network, not the one-time export
            import shutil

            shutil.copytree(onnx, work / "cache" / "onnx")
        print(f"{count:,} images of 32x32, {os.cpu_count()} CPUs, EfficientNet-Lite0\n")
        for step, command in (
            ("extract (empty cache)", [*graft, "extract", str(data), "--out",
                                       str(work / "f.h5"), "-q"]),
            ("extract (cached)", [*graft, "extract", str(data), "--out", str(work / "g.h5"),
                                  "-q"]),
            ("train (cached)", [*graft, "train", str(data), "--out", str(work / "m"), "-q"]),
        ):
            seconds, err = timed(command, env)
            line = re.search(r"(\d+) images: (\d+) from cache, (\d+) extracted", err)
            extracted = int(line.group(3)) if line else 0
            rate = f"{count / seconds:8.1f} img/s" if extracted else " " * 14
            print(f"{step:<24}{seconds:8.1f} s  {rate}  ({line.group(0) if line else ''})")
        import json

        metrics = json.loads((work / "m" / "metrics.json").read_text())
        print(f"\nheld-out accuracy {metrics['accuracy']:.3f} on {metrics['n_test']:,} images")


if __name__ == "__main__":
    main()
