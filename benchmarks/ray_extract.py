"""Local extraction against `--engine ray` on the same images (this machine's CPUs either way).

2,000 generated JPEGs (benchmarks/scale_memory.py's generator), the default backbone, an empty
feature cache for each run; whole `graft extract` processes, timed from outside. On one 2-core
machine Ray can only add overhead (its own processes, the object store, serialization): the goal
here is the same img/s within 20 %. Each engine also runs on the first --small images alone,
twice, so that the fixed cost (starting Ray, its workers and actors) and the rate of the
images beyond it can be told apart: rate = (images - small) / (time - time for small), with the
better of the two times at each size.

With --address, the Ray runs join a cluster started beforehand (`ray start --head --num-cpus 2`
on this machine, then --address auto), as on a real cluster, where Ray is already running: the
fixed cost then leaves out starting Ray itself.

On a GPU machine, `benchmarks/gpu_extract.py --parts ray` times `--engine ray --device cuda`
against a local `--device cuda` run the same way (its numbers: benchmarks/README.md).

Usage: python benchmarks/ray_extract.py [--images 2000] [--small 400] [--address auto]
       (needs graft[ray])
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
    parser.add_argument("--small", type=int, default=400)
    parser.add_argument("--address", default=None,
                        help="join this running Ray cluster instead of starting one per run")
    args = parser.parse_args()
    joined = ["--address", args.address] if args.address else []
    with tempfile.TemporaryDirectory(prefix="graft-ray-bench-") as tmp:
        data = Path(tmp) / "data"
        generate(data, args.images)
        home = Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graft"))
        small = Path(tmp) / "small"
        for path in sorted(data.rglob("*.jpg"))[: args.small]:
            (small / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, small / path.parent.name / path.name)
        print(f"{args.images} images, {os.cpu_count()} CPUs, EfficientNet-Lite0"
              + (f", Ray runs joining the cluster at {args.address}" if args.address else ""))
        best: dict[tuple[str, int], float] = {}
        for engine, folder, count in [(e, f, c) for _ in range(2) for e in ("local", "ray")
                                      for f, c in ((data, args.images), (small, args.small))]:
            cache = Path(tmp) / f"cache-{engine}"
            shutil.rmtree(cache, ignore_errors=True)
            if (home / "onnx").is_dir():  # the exported graph, not the one-time export
                shutil.copytree(home / "onnx", cache / "onnx")
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "graft", "extract", str(folder), "--out",
                            str(Path(tmp) / "f.h5"), "--engine", engine, "--cache-dir",
                            str(cache), "-q", *(joined if engine == "ray" else [])],
                           check=True, capture_output=True)
            seconds = time.perf_counter() - start
            best[engine, count] = min(seconds, best.get((engine, count), float("inf")))
            print(f"  {engine:<6} {count:>6} images {seconds:7.1f} s  {count / seconds:7.1f} img/s "
                  f"(whole process)", flush=True)
        for engine in ("local", "ray"):
            per_image = ((best[engine, args.images] - best[engine, args.small])
                         / (args.images - args.small))
            fixed = best[engine, args.small] - args.small * per_image
            print(f"  {engine:<6} fixed cost {fixed:5.1f} s, then {1 / per_image:6.1f} img/s")


if __name__ == "__main__":
    main()
