"""The one inference pipeline: every entry point gives the same network input and features as the
extraction cache; the pixel limit holds under threads; sessions are built once; threads add up."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import pytest
from PIL import Image

import graft
from graft.data import ImageDataset, PreprocessConfig, Sample
from graft.errors import ImageError
from graft.features import create_engine, extract_dataset, open_cache
from graft.inference import (
    OnnxEngine,
    decode_image,
    iter_decoded_batches,
    plan_threads,
    preprocess,
)
from graft.system import available_cpus


def _odd_images(folder) -> dict[str, object]:
    """The files that break naive decoders: EXIF rotation, CMYK, 16-bit, palette, alpha, huge."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    pixels[:, :100] //= 3  # an asymmetric picture, so a missed rotation shows
    files = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    files["exif"] = folder / "exif-rotated.jpg"
    Image.fromarray(pixels).save(files["exif"], exif=exif.tobytes(), quality=92)
    files["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(pixels).convert("CMYK").save(files["cmyk"])
    files["16bit"] = folder / "gray16.png"
    Image.fromarray((rng.integers(0, 65535, (90, 140))).astype(np.uint16)).save(files["16bit"])
    files["palette"] = folder / "palette.gif"
    Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    files["rgba"] = folder / "alpha.png"
    rgba = np.dstack([pixels, rng.integers(0, 255, (120, 200), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["big"] = folder / "big-4000x3000.jpg"
    big = Image.fromarray(pixels).resize((4000, 3000), Image.Resampling.BILINEAR)
    big.save(files["big"], quality=85)
    return files


def _entry_points(path):
    """The same image as a path, bytes, a binary file object and an unloaded PIL image."""
    data = path.read_bytes()
    return {"path": path, "str": str(path), "bytes": data, "file": io.BytesIO(data),
            "pil": Image.open(path)}


def test_every_entry_point_gives_the_features_the_cache_stored(tiny_backbone, tmp_path):
    files = _odd_images(tmp_path / "odd")
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    cache = open_cache(engine, tmp_path / "cache")
    dataset = ImageDataset(root=tmp_path / "odd", classes=["x"], layout="folders", samples=[
        Sample(path=str(p), relpath=p.name, label="x") for p in files.values()])
    keys, report = extract_dataset(dataset, [engine], [cache], batch_size=4, progress=False)
    assert report.failures == [] and report.n_computed == len(files)
    stored = cache.get(keys)
    config = tiny_backbone.preprocess
    for (name, path), row in zip(files.items(), stored):
        inputs = {kind: preprocess(source, config)[0]
                  for kind, source in _entry_points(path).items()}
        reference = inputs["path"]
        for kind, array in inputs.items():
            assert np.array_equal(array, reference), f"{name}: {kind} differs from the path"
            features = engine(array[None])[0]
            assert np.array_equal(features, row), f"{name}: {kind} features differ from the cache"
    # The EXIF rotation really was applied (the image stands upright: taller than wide).
    assert decode_image(files["exif"]).size == (120, 200)
    # The 4000x3000 JPEG was decoded at a reduced DCT scale, the same for every entry point.
    assert decode_image(files["big"], min_size=(200, 200)).size == (500, 375)


def test_predictor_entry_points_agree(tiny_backbone, tmp_path):
    from conftest import make_dataset

    import graft
    from graft.cli import main

    data = make_dataset(tmp_path / "colors", n_per_class=8)
    model = tmp_path / "model"
    assert main(["train", str(data), "--out", str(model), "--backbone", "test_efficientnet",
                 "--weights", "random", "-q"]) == 0
    files = _odd_images(tmp_path / "odd")
    predictor = graft.load(model)
    for name, path in files.items():
        sources = _entry_points(path)
        sources["array"] = np.asarray(decode_image(path))  # already decoded: same pixels
        if name == "big":
            del sources["array"]  # a full-size array is resized from full resolution, not draft
        probabilities = {kind: predictor.predict_proba(source) for kind, source in sources.items()}
        for kind, value in probabilities.items():
            assert value.shape == (1, 3)
            np.testing.assert_array_equal(value, probabilities["path"], err_msg=f"{name} {kind}")
    one = predictor(files["rgba"], top_k=2)
    assert [set(p) for p in one] == [{"label", "index", "score"}] * 2
    many = predictor([files["rgba"], files["cmyk"].read_bytes()], top_k=3)
    assert len(many) == 2 and all(len(p) == 3 for p in many)
    assert [p["label"] for p in many[0][:2]] == [p["label"] for p in one]
    assert [p["score"] for p in many[0][:2]] == pytest.approx([p["score"] for p in one], abs=1e-6)
    with pytest.raises(ImageError, match="image 1"):
        predictor([files["rgba"], b"not an image"])


def _png(size: tuple[int, int], value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pixel_limit_holds_under_threads():
    """10,000 images decoded by 8 threads, 7 over the limit: every one of them is refused."""
    small, large = _png((16, 16), 100), _png((40, 40), 200)  # 256 and 1,600 pixels
    over = {17, 1234, 4999, 5000, 7777, 9001, 9999}
    items = [(i, large if i in over else small) for i in range(10_000)]
    config = PreprocessConfig(input_size=(3, 8, 8), crop_pct=1.0)
    load = partial(lambda item, configs: preprocess(item[1], configs, max_pixels=1_000))
    filters_before = list(warnings.filters)
    for _ in range(3):
        refused, decoded = set(), 0
        for batch in iter_decoded_batches(items, [config], batch_size=256, workers=8, load=load):
            refused |= {i for (i, _), reason in batch.failures if "decompression bomb" in reason}
            decoded += len(batch.items)
        assert refused == over and decoded == 10_000 - len(over)
    assert warnings.filters == filters_before  # no process-global state touched


_GLOBAL_STATE_CHECK = """
import io, warnings
import numpy  # numpy adds its own warning filters on import; graft must add none
from PIL import Image, ImageFile
state = lambda: (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters))
before = state()
import graft, graft.data, graft.inference
from graft.data import PreprocessConfig
from graft.inference import preprocess
buffer = io.BytesIO()
Image.new("RGB", (50, 40)).save(buffer, format="JPEG")
preprocess(buffer.getvalue(), PreprocessConfig(input_size=(3, 32, 32)))
assert state() == before, (state(), before)
"""


def test_import_and_decoding_change_no_global_state():
    subprocess.run([sys.executable, "-c", _GLOBAL_STATE_CHECK], check=True)


def test_arrays_and_bad_sources_are_checked():
    config = PreprocessConfig(input_size=(3, 16, 16), crop_pct=1.0)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent: white, as for files
    assert preprocess(rgba, config)[0].min() == 255
    with pytest.raises(ImageError, match="uint8 array"):
        preprocess(np.zeros((20, 30, 3), np.float32), config)
    with pytest.raises(ImageError, match="not an image source"):
        preprocess(12345, config)
    with pytest.raises(ImageError, match="decompression bomb"):
        preprocess(np.zeros((100, 100, 3), np.uint8), config, max_pixels=500)


def test_session_is_created_once_under_concurrent_first_use(tiny_backbone, tmp_path):
    exported = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    engine = OnnxEngine(exported.path, key=exported.key, preprocess=exported.preprocess,
                        num_features=exported.num_features, threads=1)
    barrier = threading.Barrier(8)

    def first_use(_):
        barrier.wait()
        return engine.session

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(first_use, range(8)))
    assert len({id(s) for s in sessions}) == 1
    images = np.random.default_rng(0).integers(0, 255, (5, *tiny_backbone.preprocess.size, 3),
                                               dtype=np.uint8)
    together = engine(images)  # slices of the pinned batch size, the tail padded
    one_by_one = np.concatenate([engine(images[i:i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, one_by_one)


def test_a_batch_is_shared_among_threads_with_the_same_features(tiny_backbone, tmp_path):
    exported = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    images = np.random.default_rng(1).integers(0, 255, (7, *tiny_backbone.preprocess.size, 3),
                                               dtype=np.uint8)
    common = dict(key=exported.key, preprocess=exported.preprocess,
                  num_features=exported.num_features)
    alone = OnnxEngine(exported.path, threads=1, micro_batch=2, **common)
    shared = OnnxEngine(exported.path, threads=3, micro_batch=2, **common)
    expected = alone(images)
    for _ in range(3):  # 4 slices (the last padded) over 3 callers, in order
        np.testing.assert_array_equal(shared(images), expected)
    np.testing.assert_array_equal(shared(images[:1]), expected[:1])
    assert shared.session.get_session_options().intra_op_num_threads == 1
    assert shared._callers == 3


def test_a_cpu_engine_never_gets_cuda(monkeypatch, tiny_backbone, tmp_path):
    from graft.inference.engine import onnx_providers

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu", both) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", both) == both
    assert onnx_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(graft.ConfigError, match="device must be one of auto, cpu"):
        onnx_providers("gpu", both)
    exported = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    assert exported.providers == ["CPUExecutionProvider"]
    assert exported.session.get_providers() == ["CPUExecutionProvider"]

    # With onnxruntime-gpu installed, the settings callers read before the first call already
    # say what the session will do: decode ahead for the GPU, none of that on the CPU.
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: both)
    common = dict(key=exported.key, preprocess=exported.preprocess,
                  num_features=exported.num_features, threads=2)
    cpu = OnnxEngine(exported.path, device="cpu", **common)
    assert (cpu.providers, cpu.prefetch, cpu.micro_batch) == (["CPUExecutionProvider"], 0, 1)
    gpu = OnnxEngine(exported.path, device="auto", **common)
    assert (gpu.providers, gpu.prefetch, gpu.micro_batch) == (both, 2, None)
    assert gpu._session is None


def test_closing_an_engine_stops_its_threads_and_a_later_call_reloads(tiny_backbone, tmp_path):
    exported = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    images = np.random.default_rng(2).integers(0, 255, (4, *tiny_backbone.preprocess.size, 3),
                                               dtype=np.uint8)
    with OnnxEngine(exported.path, key=exported.key, preprocess=exported.preprocess,
                    num_features=exported.num_features, threads=2) as engine:
        expected = engine(images)
        pool = engine._pool
        assert pool is not None
    assert engine._pool is None and engine._session is None and pool._shutdown
    np.testing.assert_array_equal(engine(images), expected)
    engine.close()


def test_thread_plan_is_logged_once():
    import logging

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("graft")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for _ in range(3):
            plan_threads(97)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert messages == ["threads: 97 CPU(s): decoding with 97 thread(s), then the network on "
                        "97 image(s) at a time, in turn"]


def test_thread_plan_uses_the_available_cpus():
    for cpus in range(1, 33):
        plan = plan_threads(cpus)
        assert plan.decode == plan.onnx == plan.cpus == cpus
    assert plan_threads().cpus == available_cpus()
    with pytest.raises(graft.ConfigError, match="^threads must be >= 1"):
        plan_threads(0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_thread_plan_follows_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from graft.inference import plan_threads\n"
            "plan = plan_threads(); print(plan.cpus, plan.decode, plan.onnx)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == ["1", "1", "1"]


def test_decoding_and_the_network_take_turns(tiny_backbone, tmp_path):
    """On CPU, no image is decoded while the network runs: the threads never compete."""
    import time

    from conftest import make_image

    paths = [make_image(tmp_path / f"{i}.jpg", (i * 9, 50, 90), i, size=(300, 240))
             for i in range(24)]
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    decoding, forwarding, lock = [], [], threading.Lock()

    def timed_load(item, configs):
        start = time.perf_counter()
        result = preprocess(item, configs)
        with lock:
            decoding.append((start, time.perf_counter()))
        return result

    n = 0
    for batch in iter_decoded_batches(paths, [engine.preprocess], batch_size=5, workers=3,
                                      load=timed_load, prefetch=engine.prefetch):
        start = time.perf_counter()
        n += len(engine(batch.images[0]))
        forwarding.append((start, time.perf_counter()))
    assert n == 24 and len(decoding) == 24 and len(forwarding) == 5
    for a, b in decoding:
        for c, d in forwarding:
            assert b <= c or d <= a, "an image was decoded while the network ran"


def test_resize_and_crop_fits_every_size_without_a_crop_margin():
    """crop_pct=1: the crop box is the whole resized side, which float rounding could push an ulp
    past the image (PIL then refuses the box); every size from 200 to 300 px must work."""
    from PIL import Image

    from graft.data.preprocess import PreprocessConfig, resize_and_crop

    configs = (PreprocessConfig(crop_pct=1.0),
               PreprocessConfig(input_size=(3, 227, 227), crop_mode="squash", crop_pct=1.0))
    for config in configs:
        for width in range(200, 301):
            for height in (width, 230, 333):
                array = resize_and_crop(Image.new("RGB", (width, height), "gray"), config)
                assert array.shape == (*config.size, 3) and int(array.mean()) == 128
