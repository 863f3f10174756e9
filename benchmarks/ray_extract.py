"""Local extraction against `--engine ray` on the same images (this machine's CPUs either way).

2,000 generated JPEGs (benchmarks/scale_memory.py's generator), the default backbone, an empty
feature cache for each run; whole `graft extract` processes, timed from outside. On one 2-core
machine Ray can only add overhead (its own processes, the object store, serialization): the goal
here is the same img/s within 20 %.

Usage: python benchmarks/ray_extract.py [--images 2000]   (needs graft[ray])
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_memory import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-ray-bench-") as tmp:
        data = Path(tmp) / "data"
        generate(data, args.images)
        home = Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graft"))
        print(f"{args.images} images, {os.cpu_count()} CPUs, EfficientNet-Lite0")
        for engine in ("local", "ray", "local", "ray"):
            cache = Path(tmp) / f"cache-{engine}"
            shutil.rmtree(cache, ignore_errors=True)
            if (home / "onnx").is_dir():  # the exported graph, not the one-time export
                shutil.copytree(home / "onnx", cache / "onnx")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "graft", "extract", str(data), "--out",
                            str(Path(tmp) / "f.h5"), "--engine", engine, "--cache-dir",
                            str(cache), "-q"], check=True, capture_output=True)
            seconds = time.perf_counter() - start
            print(f"  {engine:<6} {seconds:7.1f} s  {args.images / seconds:7.1f} img/s "
                  f"(whole process)", flush=True)


if __name__ == "__main__":
    main()
