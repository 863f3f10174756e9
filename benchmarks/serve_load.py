"""`graft serve` under load, against the server people write from the tutorials.

  graft      `graft serve MODEL` (EfficientNet-Lite0 + logreg trained on hymenoptera)
  baseline   FastAPI, one request = one eager PyTorch forward of the same backbone (timm
             tf_efficientnet_lite0, same weights) and a linear head of the same size, with the
             usual torchvision-style preprocessing, as the tutorials write it
             (benchmarks/serve_baseline.py)
  offline    `Predictor.predict_paths` over the same photos in one process (what `graft
             predict` does), the throughput a server is measured against

Every request posts one real photo (hymenoptera's val folder, in turn) as the raw body, from an
asyncio client (aiohttp) on loopback with C requests in flight, for --seconds per level.
Then: an overload run (concurrency 4x --max-queue: 503s, not timeouts), and a soak (the
server's RSS after 1,000 and after --soak requests).

Usage: python benchmarks/serve_load.py [--levels 1,8,32,64] [--seconds 10] [--soak 20000]
       [--skip-baseline] [--precision fp32|int8]      (needs `pip install aiohttp`, and graft[all,serve])
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "datasets" / "hymenoptera"


def _start(command: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise SystemExit(f"server exited: {command}")
        match = re.search(r"(?:listening on|Uvicorn running on) (http://[\d.:]+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, match.group(1)
    raise SystemExit(f"server did not start: {command}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _wait_ready(url: str) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


async def _load(url: str, images: list[bytes], concurrency: int, *, seconds: float | None = None,
                requests: int | None = None, on_count=None) -> dict:
    """C workers posting images back to back; latencies of the answered requests."""
    import aiohttp

    latencies: list[float] = []
    refusals: list[float] = []  # how long a 503 took to come back
    statuses: dict[int, int] = {}
    errors = 0
    done = 0
    stop_at = time.perf_counter() + seconds if seconds else None
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)

    async def worker(index: int, session) -> None:
        nonlocal errors, done
        i = index
        while True:
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            if requests is not None:
                if done >= requests:
                    return
                done += 1
            body = images[i % len(images)]
            i += concurrency
            start = time.perf_counter()
            try:
                async with session.post(url, data=body,
                                        headers={"Content-Type": "image/jpeg"}) as response:
                    await response.read()
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    if response.status == 200:
                        latencies.append(time.perf_counter() - start)
                    elif response.status == 503:
                        refusals.append(time.perf_counter() - start)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            if on_count is not None:
                on_count(sum(statuses.values()))

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(i, session) for i in range(concurrency)))
    wall = time.perf_counter() - start
    latencies.sort()
    refusals.sort()

    def pct(q: float, values: list[float] = latencies) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 \
            if values else float("nan")

    return {"ok": len(latencies), "img_s": len(latencies) / wall, "p50": pct(0.5),
            "p90": pct(0.9), "p99": pct(0.99), "statuses": statuses, "errors": errors,
            "wall": wall, "refused_p50": pct(0.5, refusals), "refused_p99": pct(0.99, refusals)}


def _row(name: str, concurrency: int, r: dict) -> str:
    other = {k: v for k, v in r["statuses"].items() if k != 200}
    return (f"{name:<9}{concurrency:>5}{r['img_s']:>9.1f}{r['p50']:>9.1f}{r['p90']:>9.1f}"
            f"{r['p99']:>9.1f}{r['ok']:>8}   {other or '-'}{' errors=' + str(r['errors']) if r['errors'] else ''}")


def _train(model: Path, precision: str) -> None:
    subprocess.run([sys.executable, "-m", "graft", "train", str(DATA), "--out", str(model),
                    "--precision", precision, "-q"], check=True, capture_output=True)


def _offline(model: Path, paths: list[Path]) -> float:
    import graft

    predictor = graft.load(model)
    list(predictor.predict_paths(paths[:32]))  # warm
    best = 0.0
    for _ in range(2):  # the better of two passes over the photos, 3 times each
        start = time.perf_counter()
        count = sum(1 for _ in predictor.predict_paths(paths * 3))
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--soak", type=int, default=20000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                        help="graft's model (train --precision); the baseline stays fp32")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    paths = sorted((DATA / "val").glob("*/*.jpg"))
    images = [p.read_bytes() for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "hymenoptera"
        _train(model, args.precision)
        offline = _offline(model, paths)
        print(f"{len(images)} hymenoptera photos; {os.cpu_count()} CPUs; graft's model "
              f"{args.precision}; offline Predictor "
              f"(graft predict's path): {offline:.1f} img/s\n")
        print(f"{'server':<9}{'conc':>5}{'img/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
              f"{'ok':>8}   other statuses")
        results = {}
        servers = [("graft", [sys.executable, "-m", "graft", "serve", str(model), "--port", "0"],
                    "/predict", "/v2/health/ready")]
        if not args.skip_baseline:
            servers.append(("baseline", [sys.executable, str(Path(__file__).with_name(
                "serve_baseline.py")), "8931"],
                            "/predict", "/ready"))
        for name, command, path, ready in servers:
            process, url = _start(command)
            try:
                asyncio.run(_wait_ready(url + ready))
                asyncio.run(_load(url + path, images, 4, seconds=2))  # warm-up
                for level in levels:
                    result = asyncio.run(_load(url + path, images, level, seconds=args.seconds))
                    results[name, level] = result
                    print(_row(name, level, result), flush=True)
            finally:
                process.terminate()
                process.wait(30)
        if ("graft", 32) in results:
            ratio = results["graft", 32]["img_s"] / offline
            print(f"\ngraft at concurrency 32: {ratio:.0%} of offline throughput", end="")
            if results.get(("baseline", 32), {}).get("img_s"):
                print(f", {results['graft', 32]['img_s'] / results['baseline', 32]['img_s']:.1f}x "
                      f"the baseline", end="")
            print()

        # Overload: 4x more requests in flight than the queue admits.
        process, url = _start([sys.executable, "-m", "graft", "serve", str(model), "--port", "0",
                               "--max-queue", "16"])
        try:
            asyncio.run(_wait_ready(url + "/v2/health/ready"))
            result = asyncio.run(_load(url + "/predict", images, 64, seconds=args.seconds))
            print(f"\noverload (--max-queue 16, 64 in flight): {result['img_s']:.1f} img/s "
                  f"answered, statuses {result['statuses']}, client errors/timeouts "
                  f"{result['errors']}, p50 of answered {result['p50']:.1f} ms; the 503s came "
                  f"back in {result['refused_p50']:.1f} ms (p50), {result['refused_p99']:.1f} ms "
                  f"(p99)")
        finally:
            process.terminate()
            process.wait(30)

        # Soak: RSS after 1,000 and after --soak requests.
        process, url = _start([sys.executable, "-m", "graft", "serve", str(model), "--port",
                               "0"])
        try:
            asyncio.run(_wait_ready(url + "/v2/health/ready"))
            marks: dict[int, float] = {}

            def mark(count: int) -> None:
                for point in (min(1000, args.soak), args.soak):
                    if count >= point and point not in marks:
                        marks[point] = _rss_mb(process.pid)

            start = time.perf_counter()
            result = asyncio.run(_load(url + "/predict", images, 32, requests=args.soak,
                                       on_count=mark))
            mark(args.soak)
            first = min(1000, args.soak)
            print(f"\nsoak: {sum(result['statuses'].values())} requests in "
                  f"{time.perf_counter() - start:.0f} s, statuses {result['statuses']}, errors "
                  f"{result['errors']}; server RSS after {first:,}: {marks[first]:.0f} MB, "
                  f"after {args.soak:,}: {marks[args.soak]:.0f} MB "
                  f"({marks[args.soak] / marks[first] - 1:+.1%})")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
