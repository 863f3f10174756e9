"""`graft serve` as a real process on a loopback port, driven by real clients: urllib, the
`tritonclient[http]` package, and headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset, shared_path
from PIL import Image

import graft

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    data = make_dataset(root / "colors", n_per_class=8)
    result = graft.train(data, out=root / "colors-model", progress=False, backbone=TINY,
                         weights="random", cache_dir=root / "cache")
    return result.model_dir


@contextlib.contextmanager
def running(*args: str, env: dict | None = None):
    """`graft serve ARGS --port 0` in a subprocess; yields (base URL, process) once ready."""
    process = subprocess.Popen(
        [sys.executable, "-m", "graft", "serve", *args, "--port", "0"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    lines: list[str] = []
    url = None
    try:
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            url = match.group(1) if match else None
        assert url, "server did not start:\n" + "".join(lines)
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
        while time.monotonic() < deadline:
            if request(url + "/v2/health/ready")[0] == 200:
                break
            time.sleep(0.05)
        process.log = lines
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            method: str | None = None):
    """(status, headers, body) of one HTTP request; errors are answers too (status 0: no answer,
    the connection refused or reset, as a stopping server's last accepted ones are)."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()  # any-case keys
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()
    except (urllib.error.URLError, ConnectionResetError):
        return 0, {}, b""


def post_json(url: str, payload) -> tuple[int, dict]:
    status, _, body = request(url, json.dumps(payload).encode(),
                              {"Content-Type": "application/json"})
    return status, json.loads(body)


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
              f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
             + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(model: Path, name: str = "red") -> bytes:
    data = model.parent / "colors" / name
    return min(data.glob("*.jpg")).read_bytes()


def test_native_api_predicts_like_graft_predict(model):
    predictor = graft.load(model)
    red, blue = photo(model, "red"), photo(model, "blue")
    expected = predictor.predict_proba([red, blue])
    # a long --max-delay-ms: a batch still starts at once when nothing else is on its way
    with running(str(model), "--max-delay-ms", "5000") as (url, _):
        start = time.monotonic()
        status, _, body = request(url + "/predict?top_k=3", red,
                                  {"Content-Type": "image/jpeg"})
        assert time.monotonic() - start < 2.5
        answer = json.loads(body)
        assert status == 200 and answer["model"] == "colors-model"
        assert set(answer["timing_ms"]) == {"decode", "queue", "infer"}
        ranked = predictor.postprocess(expected[:1], 3)[0]
        assert [p["label"] for p in answer["predictions"][0]] == [p["label"] for p in ranked]
        np.testing.assert_allclose([p["score"] for p in answer["predictions"][0]],
                                   [p["score"] for p in ranked], atol=1e-6)

        data, kind = multipart([("a.jpg", red), ("b.jpg", blue)])
        status, _, body = request(url + "/v1/models/colors-model/predict?top_k=1", data,
                                  {"Content-Type": kind})
        ranked = json.loads(body)["predictions"]
        assert status == 200 and [r[0]["label"] for r in ranked] == \
            [p[0]["label"] for p in predictor.postprocess(expected, 1)]

        status, answer = post_json(url + "/v1/models/colors-model/predict?top_k=3", {
            "images": [base64.b64encode(red).decode(), base64.b64encode(blue).decode()]})
        assert status == 200
        scores = [[p["score"] for p in sorted(r, key=lambda p: p["index"])]
                  for r in answer["predictions"]]
        np.testing.assert_allclose(scores, expected, atol=1e-6)  # same pipeline, same numbers

        status, _, body = request(url + "/v1/models")
        info = json.loads(body)["models"][0]
        assert status == 200 and info["labels"] == predictor.labels and info["ready"]
        assert info["accuracy"] == json.loads((model / "metrics.json").read_text())["accuracy"]

        # bodies over 1 MiB are parsed in the decoding pool, off the event loop: same answers
        noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
        big = encoded(Image.fromarray(noise), "PNG")
        assert len(big) > 1.5 * 2**20
        want = predictor.predict_proba([big, red])
        text = [base64.encodebytes(big).decode(), base64.b64encode(red).decode()]  # 76-char lines
        data, kind = multipart([("big.png", big), ("red.jpg", red)])
        import gzip

        for body, headers in (
            (json.dumps({"images": text}).encode(), {"Content-Type": "application/json"}),
            (data, {"Content-Type": kind}),
            (gzip.compress(json.dumps({"images": text}).encode(), 1),
             {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
        ):
            status, _, answer = request(url + "/v1/models/colors-model/predict?top_k=3", body,
                                        headers)
            scores = [[p["score"] for p in sorted(r, key=lambda p: p["index"])]
                      for r in json.loads(answer)["predictions"]]
            assert status == 200
            np.testing.assert_allclose(scores, want, atol=1e-6)
        status, answer = post_json(url + "/v2/models/colors-model/infer", {"inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [2], "data": text}]})
        assert status == 200
        np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (2, 3)), want,
                                   atol=1e-6)


def test_bad_input_gets_a_clear_4xx_and_the_server_goes_on(model, tmp_path):
    red = photo(model)
    with running(str(model), "--max-body-mb", "1", "--max-pixels", "250000") as (url, _):
        predict = url + "/predict"
        cases = {
            "empty": (b"", 400),
            "text": (b"just some text, not an image", 415),
            "truncated": (red[: len(red) // 2], 400),
            "bomb": (encoded(Image.new("RGB", (600, 600)), "PNG"), 413),  # 360,000 px
            "big body": (os.urandom(1024 * 1024 + 10), 413),
        }
        for name, (body, expected) in cases.items():
            status, _, answer = request(predict, body, {"Content-Type": "image/jpeg"})
            error = json.loads(answer)["error"]
            assert status == expected and error, (name, status, error)
        status, _, answer = request(predict, red[: len(red) // 2])
        assert "truncated" in json.loads(answer)["error"].lower()
        # complete but corrupt: a PNG whose compressed pixel data is scrambled (every chunk
        # and the end are there; a JPEG with scrambled data decodes to noise, no error)
        png = encoded(Image.open(io.BytesIO(red)), "PNG")
        start = png.index(b"IDAT") + 40
        corrupt = png[:start] + bytes(b ^ 0x5A for b in png[start:start + 50]) + png[start + 50:]
        status, _, answer = request(predict, corrupt)
        assert status == 400 and "broken data stream" in json.loads(answer)["error"], answer
        # over the limit while streaming (chunked: no Content-Length to check first)
        status = _chunked_post(predict, [os.urandom(256 * 1024)] * 6)
        assert status == 413
        status, answer = post_json(predict, {"images": ["not base64!!"]})
        assert status == 400 and "base64" in answer["error"]
        status, answer = post_json(predict, {"pictures": []})
        assert status == 400 and "images" in answer["error"]
        data, kind = multipart([("a.jpg", red)], field="upload")
        status, _, answer = request(predict, data, {"Content-Type": kind})
        assert status == 400 and "'file'" in json.loads(answer)["error"]
        status, _, answer = request(url + "/v1/models/nope/predict", red)
        assert status == 404 and "nope" in json.loads(answer)["error"]
        status, _, answer = request(predict + "?top_k=0", red)
        assert status == 400 and "top_k" in json.loads(answer)["error"]
        # v2: wrong datatype, wrong shape, bad binary sizes
        infer = url + "/v2/models/colors-model/infer"
        for inputs, words in (
            ([{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}], "BYTES"),
            ([{"name": "image", "datatype": "BYTES", "shape": [2],
               "data": [base64.b64encode(red).decode()]}], "shape"),
            ([{"name": "image", "datatype": "BYTES", "shape": [1, 3], "data": ["a", "b", "c"]}],
             "shape"),
            ([{"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "image"),
        ):
            status, answer = post_json(infer, {"inputs": inputs})
            assert status == 400 and words in answer["error"], answer
        header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                         "parameters": {"binary_data_size": 999}}]}).encode()
        status, _, answer = request(infer, header + b"\0" * 10,
                                    {"Inference-Header-Content-Length": str(len(header))})
        assert status == 400 and "binary_data_size" in json.loads(answer)["error"]

        # a bomb is refused from its header alone: these bytes hold no pixel data at all
        header_only = encoded(Image.new("RGB", (600, 600)), "PNG")[:64]
        status, _, answer = request(predict, header_only)
        assert status == 413 and "pixels" in json.loads(answer)["error"]
        # a path is never read: sent as the body, or as base64 text, it is just bytes
        secret = str(model / "graft.json")
        assert request(predict, secret.encode())[0] == 415
        status, answer = post_json(predict, {"images": [
            base64.b64encode(secret.encode()).decode()]})
        assert status == 415 and "graft.json" not in answer["error"]
        # formats Pillow knows but the server does not take (EPS would run Ghostscript)
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
        assert request(predict, eps)[0] == 415
        status, answer = post_json(predict, {"images": [[["not a string"]]]})
        assert status == 400 and "base64 string" in answer["error"]
        status, _, answer = request(predict, b'{"images": ' + b"[" * 100000 + b"]" * 100000
                                    + b"}", {"Content-Type": "application/json"})
        assert status == 400 and "JSON" in json.loads(answer)["error"]
        status, answer = post_json(infer, {"inputs": [{"name": "image", "datatype": "BYTES",
                                                       "shape": [1], "data": ["aa"],
                                                       "parameters": 7}]})
        assert status == 400 and "parameters" in answer["error"]
        import gzip

        status, _, answer = request(predict, gzip.compress(red)[:-20],
                                    {"Content-Encoding": "gzip"})
        assert status == 400 and "truncated" in json.loads(answer)["error"]
        assert request(predict, gzip.compress(red), {"Content-Encoding": "gzip"})[0] == 200
        assert request(predict, zlib.compress(red), {"Content-Encoding": "deflate"})[0] == 200
        for encoding, pack in (("gzip", gzip.compress), ("deflate", zlib.compress)):
            bomb = pack(bytes(5 * 1024 * 1024))  # 5 KB on the wire, 5 MB inflated
            status, _, answer = request(predict, bomb, {"Content-Encoding": encoding})
            assert status == 413 and "decompression" in json.loads(answer)["error"], encoding
        # The awkward-but-valid images are accepted, and the server still answers.
        rgb = Image.open(io.BytesIO(red)).convert("RGB")
        exif = Image.Exif()
        exif[0x0112] = 6
        awkward = {
            "exif": encoded(rgb, "JPEG", exif=exif),
            "cmyk": encoded(rgb.convert("CMYK"), "JPEG"),
            "16-bit": encoded(Image.fromarray(
                np.asarray(rgb.convert("L"), np.uint16) * 257), "PNG"),
            "rgba": encoded(rgb.convert("RGBA"), "PNG"),
            "palette": encoded(rgb.convert("P"), "GIF"),
            "bmp": encoded(rgb, "BMP"),
            "tiff": encoded(rgb, "TIFF"),
            "webp": encoded(rgb, "WEBP"),
        }
        for name, body in awkward.items():
            status, _, answer = request(predict, body, {"Content-Type": "image/png"})
            assert status == 200, (name, answer)
        assert request(url + "/v2/health/ready")[0] == 200
        metrics = request(url + "/metrics")[2].decode()
        for reason in ("not_image", "too_many_pixels", "body_too_large", "bad_base64"):
            assert f'graft_images_rejected_total{{reason="{reason}"}}' in metrics


def _chunked_post(url: str, chunks: list[bytes]) -> int:
    import http.client
    from urllib.parse import urlparse

    parts = urlparse(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, body=iter(chunks),
                           headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
        response = connection.getresponse()  # a reset connection fails the test
        assert "--max-body-mb" in json.loads(response.read())["error"]
        return response.status
    finally:
        connection.close()


def test_tritonclient_talks_to_it(model):
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    predictor = graft.load(model)
    red, blue = photo(model, "red"), photo(model, "blue")
    expected = predictor.predict_proba([red, blue])
    with running(str(model), "--max-batch-size", "8") as (url, _):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("colors-model")
        assert client.get_server_metadata()["name"] == "graft"
        metadata = client.get_model_metadata("colors-model")
        assert metadata["inputs"][0] == {"name": "image", "datatype": "BYTES", "shape": [-1]}
        assert metadata["outputs"][0]["shape"] == [-1, 3]
        config = client.get_model_config("colors-model")
        assert config["max_batch_size"] == 8 and "dynamic_batching" in config

        images = np.array([red, blue], dtype=np.object_)
        for binary in (True, False):  # binary tensors, then JSON with base64 text
            item = httpclient.InferInput("image", [2], "BYTES")
            item.set_data_from_numpy(images if binary else np.array(
                [base64.b64encode(x) for x in images], dtype=np.object_), binary_data=binary)
            result = client.infer("colors-model", [item], outputs=[
                httpclient.InferRequestedOutput("probabilities", binary_data=binary)])
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)

        item = httpclient.InferInput("image", [2], "BYTES")
        item.set_data_from_numpy(images)
        result = client.infer("colors-model", [item], outputs=[
            httpclient.InferRequestedOutput("probabilities", class_count=2)])
        top = result.as_numpy("probabilities")
        assert top.shape == (2, 2)
        score, index, label = top[0, 0].decode().split(":")
        best = int(np.argmax(expected[0]))
        assert (int(index), label) == (best, predictor.labels[best])
        assert float(score) == pytest.approx(expected[0, best], abs=1e-6)

        with pytest.raises(InferenceServerException, match="Unknown model"):
            client.get_model_metadata("nope")
        assert not client.is_model_ready("nope")
        with pytest.raises(InferenceServerException, match="Unknown model 'nope'"):
            client.infer("nope", [item])
        client.close()

        # The raw binary shortcut: the body is one image; outputs come back binary.
        status, headers, body = request(url + "/v2/models/colors-model/infer", red,
                                        {"Inference-Header-Content-Length": "0"})
        length = int(headers["Inference-Header-Content-Length"])
        answer = json.loads(body[:length])
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 3]
        np.testing.assert_allclose(np.frombuffer(body[length:], "<f4"), expected[0], atol=1e-6)


def test_batches_backpressure_timeouts_and_metrics(model):
    red = photo(model)
    with running(str(model), "--max-queue", "4", "--max-batch-size", "16",
                 "--max-delay-ms", "20") as (url, _):
        # concurrent requests are coalesced into batches; past the queue, 503 at once
        def timed_request(_):
            start = time.monotonic()
            status, headers, _ = request(url + "/predict", red)
            return status, headers.get("Retry-After"), time.monotonic() - start

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(timed_request, range(48)))
        assert {a[0] for a in answers} == {200, 503}
        refused = [a for a in answers if a[0] == 503]
        assert all(a[1] == "1" for a in refused)
        assert min(a[2] for a in refused) < 0.5  # refused at once, not after waiting
        # more images in one request than the queue ever holds: 413 (retrying cannot help)
        data, kind = multipart([(f"{i}.jpg", red) for i in range(5)])
        status, _, body = request(url + "/predict", data, {"Content-Type": kind})
        assert status == 413 and "--max-queue" in json.loads(body)["error"]
        metrics = request(url + "/metrics")[2].decode()
        count = float(re.search(r'graft_batch_size_count\{model="colors-model"\} (\S+)',
                                metrics).group(1))
        total = float(re.search(r'graft_batch_size_sum\{model="colors-model"\} (\S+)',
                                metrics).group(1))
        assert total > count  # at least one batch held several images
        assert 'graft_images_rejected_total{reason="queue_full"}' in metrics
        # nothing is in progress now: the gauge says 0
        assert re.search(r'^graft_queue_depth\{model="colors-model"\} 0\.0$', metrics, re.MULTILINE)
        for name in ("graft_decode_seconds_bucket", "graft_queue_seconds_bucket",
                     "graft_inference_seconds_bucket",
                     'graft_request_seconds_bucket{endpoint="/predict",',
                     'graft_requests_total{endpoint="/predict",method="POST",status="200"}'):
            assert name in metrics
        for status in ("503", "413"):  # counted with the status the client got
            assert f'graft_requests_total{{endpoint="/predict",method="POST",status="{status}"}}' \
                in metrics
        assert request(url + "/nowhere")[0] == 404
        assert 'graft_requests_total{endpoint="unmatched",method="GET",status="404"}' in \
            request(url + "/metrics")[2].decode()
    with running(str(model), "--timeout-s", "0.001") as (url, _):
        data, kind = multipart([(f"{i}.jpg", red) for i in range(16)])
        status, _, body = request(url + "/predict", data, {"Content-Type": kind})
        assert status == 504 and "--timeout-s" in json.loads(body)["error"]
        assert 'graft_images_rejected_total{reason="timeout"}' in \
            request(url + "/metrics")[2].decode()


def test_several_models_side_by_side_and_a_graceful_stop(model):
    """SIGTERM: stop accepting, answer what is in flight, exit."""
    red = photo(model)
    with running(f"first={model}", f"second={model}", "--max-batch-size", "1",
                 "--max-queue", "1024") as (url, process):
        for name in ("first", "second"):
            status, _, body = request(f"{url}/v1/models/{name}/predict", red)
            assert status == 200 and json.loads(body)["model"] == name
        status, _, body = request(url + "/predict", red)
        assert status == 404 and "/v1/models/NAME/predict" in json.loads(body)["error"]
        # SIGTERM while a request is in flight (1,000 images, one per batch: seconds of work)
        data, kind = multipart([(f"{i}.jpg", red) for i in range(1000)])
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(answer=request(
            f"{url}/v1/models/first/predict", data, {"Content-Type": kind})))
        worker.start()
        depth = re.compile(r'^graft_queue_depth\{model="first"\} (\S+)$', re.MULTILINE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the server holds the request's images
            if float(depth.search(request(url + "/metrics")[2].decode()).group(1)) > 0:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert worker.is_alive()  # the request was in flight when the signal came (here it
        deadline = time.monotonic() + 10  # takes about 3 s: decoding, then 1,000 batches)
        while request(url + "/v2/health/ready")[0] != 0:  # until it stops listening
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        worker.join(60)
        assert result["answer"][0] == 200
        assert len(json.loads(result["answer"][2])["predictions"]) == 1000
        # uvicorn re-raises the signal once it has drained: the conventional exit status
        assert process.wait(30) in (0, -signal.SIGTERM)
        log = "".join(process.log)
        from graft.system import available_cpus

        cpus = available_cpus()  # sized to the CPUs this process may use
        for setting in (f"{cpus} CPU(s): {cpus} decoding thread(s)", f"{cpus} image(s) at a time",
                        "batches up to 1 images", "waiting at most 5 ms", "queue 1024",
                        "timeout 30 s", "body up to 20 MB", "pixels"):
            assert setting in log, setting
        assert "Traceback" not in log


def _readme_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the README's ``section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, re.DOTALL)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_serving_examples_work_as_written(model, tmp_path):
    """Every curl line and Python snippet of "Serve a model", run against a real server (only
    the port differs: the test's server listens on a free one)."""
    blocks = _readme_blocks("Serve a model")
    curls = [line for language, code in blocks if language == "bash"
             for line in code.splitlines() if line.startswith("curl ")]
    snippets = [code for language, code in blocks if language == "python"]
    assert len(curls) == 2 and len(snippets) == 2
    for name, color in (("photo.jpg", "red"), ("a.jpg", "green"), ("b.jpg", "blue")):
        (tmp_path / name).write_bytes(photo(model, color))
    labels = graft.load(model).labels
    with running(f"my-model={model}") as (url, _):
        here = url.removeprefix("http://")
        for line in curls:
            result = subprocess.run(line.replace("127.0.0.1:8000", here), shell=True,
                                    cwd=tmp_path, capture_output=True, text=True, timeout=60,
                                    check=True)
            answer = json.loads(result.stdout)
            assert answer["model"] == "my-model" and set(answer["timing_ms"]) == {
                "decode", "queue", "infer"}, line
            sizes = [len(ranked) for ranked in answer["predictions"]]
            assert sizes == ([3] if "top_k=3" in line else [3, 3]), line  # 3 classes
        for code in snippets:
            code = code.replace("127.0.0.1:8000", here)
            result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                                    capture_output=True, text=True, timeout=60, check=False)
            assert result.returncode == 0, result.stderr
            printed = result.stdout.strip()
            if "tritonclient" in code:  # [[b'score:index:label' ...]], best first
                entries = re.findall(r"b'([\d.]+):(\d+):(\w+)'", printed)
                assert len(entries) == 3 and [labels[int(i)] for _, i, _ in entries] == \
                    [label for _, _, label in entries], printed
            else:
                assert printed in labels, printed


def test_bad_model_directory_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "graft", "serve", str(tmp_path / "missing")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "graft: error:" in result.stderr
    result = subprocess.run([sys.executable, "-m", "graft", "serve", "bad name=x"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 2 and "not usable in a URL" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_the_web_page_in_headless_chromium(model, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    image = shared_path("datasets", "hymenoptera", "val", "bees")
    image = min(image.glob("*.jpg"))
    cli = subprocess.run([sys.executable, "-m", "graft", "predict", str(model), str(image),
                          "--json", "--top-k", "3"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=True)
    expected = json.loads(cli.stdout)["predictions"]
    shot = Path(os.environ.get("GRAFT_SCREENSHOTS", tmp_path)) / "serve-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with running(str(model)) as (url, _), playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#info').textContent.includes('3 "
                                   "classes')")
            assert "held-out accuracy" in page.text_content("#info")
            page.set_input_files("#file", str(image))
            page.wait_for_selector(".card[data-done='1']", timeout=30000)
            shown = page.inner_text(".card .top")  # what a person reads on the page
            rows = [(row.query_selector(".l").inner_text(), row.query_selector(".s").inner_text())
                    for row in page.query_selector_all(".card .row")]
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    # the page shows what `graft predict` prints: the label, then each class's bar and score
    assert shown == expected[0]["label"]
    assert [label for label, _ in rows] == [p["label"] for p in expected]  # top-5 of 3 classes
    for (_, score), p in zip(rows, expected):  # shown to 0.1 %, from the server's own numbers
        assert score.endswith("%") and abs(float(score[:-1]) - 100 * p["score"]) <= 0.051
    with Image.open(shot) as screenshot:
        assert screenshot.format == "PNG" and screenshot.width >= 600


def test_v2_bytes_wire_format_round_trips():
    from graft.serving.v2 import _bytes_elements

    elements = [b"abc", b"", bytes(range(256))]
    wire = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    assert _bytes_elements(wire) == elements


def test_ready_only_after_load_and_warm_up_and_not_while_draining(model):
    import asyncio

    from graft.serving import ServeConfig, create_app

    app = create_app(ServeConfig(models={"m": model}))
    state = app.state.graft

    async def status_of(path: str) -> int:  # one GET through the ASGI app itself
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                   "query_string": b"", "headers": [], "http_version": "1.1",
                   "scheme": "http", "server": ("test", 80), "client": ("test", 1),
                   "root_path": "", "app": app}, receive, send)
        return sent[0]["status"]

    async def lifecycle():
        async with app.router.lifespan_context(app):
            assert not state.ready  # listening, the model still loading in the background
            while not state.ready:
                await asyncio.sleep(0.01)
            warmups = state.metrics.batch_size.labels(model="m")._sum.get()
            assert warmups == 1  # ready only after one warm-up inference has run
            assert await status_of("/v2/health/ready") == 200
            assert await status_of("/v2/models/m/ready") == 200
            state.draining = True  # what SIGTERM sets before uvicorn drains
            assert not state.ready
            assert await status_of("/v2/health/ready") == 503
            assert await status_of("/v2/models/m/ready") == 503

    asyncio.run(lifecycle())
