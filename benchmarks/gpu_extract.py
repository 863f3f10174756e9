"""graft's CUDA paths timed on a GPU machine: the network alone, `graft extract --device cuda`,
and the same on Ray's GPU actors.

1. network: the feature engine as `--device cuda` runs it (``TorchEngine``: a uint8 NHWC batch
   in host memory -> GPU, channels_last, autocast for fp16/bf16 -> float32 features back in host
   memory), and the network alone on a batch already on the GPU. EfficientNet-Lite0 (the
   default backbone, its offline ImageNet weights) and ResNet-50 (random weights), batch 64 and
   128, fp32 (full float32 as graft runs it, TF32 off) / fp16 / bf16. Median of 30 timed calls
   after 10 warm-up calls; the relative difference of each precision's features from fp32's.
2. extract: the CPU side alone (graft's decode threads; the same preprocessing in a plain
   multiprocessing pool, one process per CPU: the ceiling), then whole `graft extract DATA
   --device cuda` processes over --images generated JPEGs (benchmarks/scale_memory.py's
   generator: 48-480 px, so decoding is cheap) with an empty feature cache, default backbone,
   batch 128 in fp32 and fp16 and batch 64 in fp32: the rate graft reports (images / extraction
   time) and the whole process's. A run over --small other images tells
   the fixed cost (starting the process, CUDA, Ray) from the rate beyond it.
3. ray: the same with ``--engine ray`` (a local Ray cluster that sees the GPU: one GPU actor,
   CPU tasks decoding), fp32 and fp16 at batch 128, its features compared with part 2's.

Usage: python benchmarks/gpu_extract.py [--images 12000] [--small 2000]
                                        [--parts network,extract,ray]
       (needs graft[train], and graft[ray] for part 3; a CUDA device)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_memory import generate

PRECISIONS = ("fp32", "fp16", "bf16")


def _median_seconds(call, warmup: int = 10, repeats: int = 30) -> float:
    import torch

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network(batches: list[int]) -> None:
    import torch

    from graft.backbones import ImageModel, create_backbone
    from graft.features.engine import AUTOCAST, TorchEngine, exact_float32

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}")
    print(f"{'backbone':<24}{'batch':>6}{'precision':>10}{'engine img/s':>14}"
          f"{'network img/s':>15}{'rel. diff':>11}")
    for name, weights in (("tf_efficientnet_lite0", None), ("resnet50", "random")):
        backbone = create_backbone(name, weights=weights)
        engine = TorchEngine(ImageModel(backbone), key="bench", preprocess=backbone.preprocess,
                             num_features=backbone.num_features, device="cuda")
        height, width = backbone.preprocess.size
        for batch in batches:
            images = np.random.default_rng(batch).integers(0, 256, (batch, height, width, 3),
                                                           dtype=np.uint8)
            on_gpu = torch.from_numpy(images).cuda()
            reference = None
            for precision in PRECISIONS:
                engine.set_precision(precision)
                features = engine(images)
                if reference is None:
                    reference = features
                difference = np.linalg.norm(features - reference) / np.linalg.norm(reference)
                whole = _median_seconds(lambda e=engine, x=images: e(x))
                dtype = getattr(torch, AUTOCAST.get(precision, "float32"))

                def alone(model=engine.model, x=on_gpu, dtype=dtype, mixed=precision != "fp32"):
                    with torch.inference_mode(), (torch.autocast("cuda", dtype=dtype) if mixed
                                                  else exact_float32("cuda")):
                        model(x)

                print(f"{name:<24}{batch:>6}{precision:>10}{batch / whole:>14.0f}"
                      f"{batch / _median_seconds(alone):>15.0f}{difference:>11.1e}", flush=True)
        engine.model.cpu()
        torch.cuda.empty_cache()


def _extract(data: Path, out: Path, cache: Path, *extra: str) -> tuple[float, float, str]:
    """(reported img/s, whole-process seconds, summary line) of one `graft extract` process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "graft", "extract", str(data), "--out",
                             str(out), "--cache-dir", str(cache), "--device", "cuda", *extra],
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"graft extract {' '.join(extra)} failed:\n{result.stderr[-3000:]}")
    summary = next(line for line in result.stderr.splitlines() if "extracted in" in line)
    rate = float(re.search(r"\(([\d.]+) img/s\)", summary).group(1))
    return rate, seconds, summary.strip()


def _preprocess_one(args: tuple) -> int:
    from graft.inference.images import preprocess

    path, config = args
    return preprocess(path, [config])[0].nbytes


def decoding(data: Path, batch: int) -> None:
    """The CPU side alone: graft's decode threads (as `graft extract` runs them), and the same
    preprocessing in one process per CPU, for comparison."""
    from multiprocessing import Pool

    from graft.backbones import create_backbone
    from graft.inference.batches import iter_decoded_batches
    from graft.system import plan_threads

    config = create_backbone("tf_efficientnet_lite0").preprocess
    paths = sorted(data.rglob("*.jpg"))
    start = time.perf_counter()
    for _ in iter_decoded_batches(paths, [config], batch_size=batch,
                                  workers=plan_threads().decode, prefetch=2):
        pass
    threads = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_preprocess_one, ((p, config) for p in paths),
                                     chunksize=64):
            pass
    processes = len(paths) / (time.perf_counter() - start)
    print(f"decoding alone: {threads:.0f} img/s in {plan_threads().decode} threads (graft), "
          f"{processes:.0f} img/s in {os.cpu_count()} processes", flush=True)


def extract_runs(tmp: Path, images: int, small: int, parts: set[str]) -> None:
    from graft.features import load_feature_file

    data, few = tmp / "data", tmp / "small"
    print(f"\ngenerating {images} + {small} JPEGs: {generate(data, images) + generate(few, small):.1f}"
          f" s on {os.cpu_count()} CPUs")
    decoding(data, 128)
    print(f"{'engine':<8}{'images':>7}{'batch':>6}{'precision':>10}{'img/s (graft)':>15}"
          f"{'process s':>11}{'img/s (process)':>17}")
    runs = []
    if "extract" in parts:
        runs += [("local", small, 128, "fp32"), ("local", images, 128, "fp32"),
                 ("local", images, 64, "fp32"), ("local", images, 128, "fp16")]
    if "ray" in parts:
        runs += [("ray", small, 128, "fp32"), ("ray", images, 128, "fp32"),
                 ("ray", images, 128, "fp16")]
    seconds_at: dict[tuple[str, int], float] = {}
    for n, (engine, count, batch, precision) in enumerate(runs):
        out = tmp / f"{engine}-{count}-{batch}-{precision}.h5"
        rate, seconds, _ = _extract(data if count == images else few, out, tmp / f"cache{n}",
                                    "--engine", engine, "--batch-size", str(batch),
                                    "--precision", precision)
        if batch == 128 and precision == "fp32":
            seconds_at[engine, count] = seconds
        print(f"{engine:<8}{count:>7}{batch:>6}{precision:>10}{rate:>15.0f}{seconds:>11.1f}"
              f"{count / seconds:>17.0f}", flush=True)
    for engine in ("local", "ray"):
        if (engine, images) in seconds_at and (engine, small) in seconds_at:
            per_image = ((seconds_at[engine, images] - seconds_at[engine, small])
                         / (images - small))
            fixed = seconds_at[engine, small] - small * per_image
            print(f"{engine}: fixed cost {fixed:.1f} s, then {1 / per_image:.0f} img/s "
                  f"(batch 128, fp32, whole processes)")
    for precision in ("fp32", "fp16"):
        local, remote = (tmp / f"{e}-{images}-128-{precision}.h5" for e in ("local", "ray"))
        if local.is_file() and remote.is_file():
            a, b = load_feature_file(local), load_feature_file(remote)
            same = a.paths == b.paths
            difference = np.linalg.norm(b.features - a.features) / np.linalg.norm(a.features)
            print(f"ray vs local, {precision}: same rows {same}, relative difference "
                  f"{difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--small", type=int, default=2000,
                        help="images of the shorter runs that tell the fixed cost from the rate")
    parser.add_argument("--parts", default="network,extract,ray")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "network" in parts:
        network([64, 128])
    if parts & {"extract", "ray"}:
        with tempfile.TemporaryDirectory(prefix="graft-gpu-bench-") as tmp:
            extract_runs(Path(tmp), args.images, args.small, parts)


if __name__ == "__main__":
    main()
