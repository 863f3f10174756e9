"""How long parsing one large request body holds `graft serve`'s event loop (and so every other
request): a 20 MB JSON base64 body and a 15 MB multipart form, parsed on the loop and (as the
server does above 1 MiB for JSON) in a thread pool. A ticker coroutine wakes every millisecond; its
longest gap is the stall. Best and median of 5 runs.

Usage: python benchmarks/serve_parse.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request

from graft.serving.inputs import native_images


def bodies(image: bytes) -> dict[str, tuple[bytes, str]]:
    boundary = uuid.uuid4().hex
    form = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"'
            f'\r\n\r\n').encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return {"json": (json.dumps({"images": [base64.b64encode(image).decode()]}).encode(),
                     "application/json"),
            "multipart": (form, f"multipart/form-data; boundary={boundary}")}


async def once(body: bytes, kind: str, pool: ThreadPoolExecutor | None,
               image: bytes) -> tuple[float, float]:
    """(parse ms, longest stall of the loop ms) of one body."""
    scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
             "headers": [(b"content-type", kind.encode())]}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    images = await native_images(Request(scope, receive), body, pool)
    parse = time.perf_counter() - start
    await asyncio.sleep(0.005)
    task.cancel()
    if images != [image]:
        raise SystemExit("the parsed image differs from the one sent")
    return parse * 1000, max(gaps) * 1000


def main() -> None:
    image = os.urandom(14 * 1024 * 1024)
    pool = ThreadPoolExecutor(os.cpu_count() or 1)
    print(f"{'body':<10}{'MB':>6}  {'where':<6}{'parse ms':>10}{'stall ms (best, median)':>26}")
    for name, (body, kind) in bodies(image).items():
        # multipart forms stay on the loop (the server passes the pool; the parser ignores it)
        for where, executor in (("loop", None), ("pool", pool))[:2 if name == "json" else 1]:
            runs = [asyncio.run(once(body, kind, executor, image)) for _ in range(5)]
            stalls = [stall for _, stall in runs]
            print(f"{name:<10}{len(body) / 1e6:>6.1f}  {where:<6}"
                  f"{min(parse for parse, _ in runs):>10.1f}"
                  f"{min(stalls):>15.1f}{statistics.median(stalls):>11.1f}")


if __name__ == "__main__":
    main()
