"""The CUDA paths, on a real GPU: skipped where torch sees none (CI), run on a lent GPU machine
(how: benchmarks/README.md, "GPU").

torch on CUDA gives the ONNX CPU graph's features (full float32), fp16/bf16 autocast
stays close and is cached apart from fp32, a mixed-precision feature file is refused by train,
train and fine-tune run end to end on CUDA, and Ray's GPU actors give the local CUDA features.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, make_dataset

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

from graft.features import create_engine, load_feature_file

TINY_ARGS = ["--backbone", TINY, "--weights", "random", "-q"]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_cuda_features_equal_onnx_on_cpu_and_mixed_precision_is_cached_apart(tiny_backbone,
                                                                            tmp_path):
    images = np.random.default_rng(0).integers(
        0, 256, size=(24, *tiny_backbone.preprocess.size, 3), dtype=np.uint8)
    cpu = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    reference = cpu(images)
    gpu = create_engine(tiny_backbone, device="cuda")
    assert gpu.key == cpu.key  # fp32 on either device: the same features, the same cache entries
    assert _relative(gpu(images), reference) < 1e-4  # full float32: no TF32 convolutions
    keys = {gpu.key}
    for precision, bound in (("fp16", 1e-2), ("bf16", 5e-2)):
        gpu.set_precision(precision)
        features = gpu(images)
        assert features.dtype == np.float32 and np.isfinite(features).all()
        assert _relative(features, reference) < bound
        keys.add(gpu.key)
    assert len(keys) == 3


def test_cli_extract_on_cuda_and_a_mixed_precision_file_is_not_trained(tmp_path, capsys):
    from graft.cli import main

    data = make_dataset(tmp_path / "data", n_per_class=8)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    for device, precision in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp16")):
        assert main(["extract", str(data), "--out", str(tmp_path / f"{device}-{precision}.h5"),
                     *TINY_ARGS, *cache, "--device", device, "--precision", precision]) == 0
    cpu, gpu, half = (load_feature_file(tmp_path / f"{n}.h5")
                      for n in ("cpu-fp32", "cuda-fp32", "cuda-fp16"))
    assert cpu.paths == gpu.paths == half.paths and len(cpu.paths) == 24
    assert _relative(gpu.features, cpu.features) < 1e-4
    assert _relative(half.features, cpu.features) < 1e-2
    assert half.backbones[0]["precision"] == "fp16" and half.key != gpu.key
    capsys.readouterr()
    assert main(["train", str(tmp_path / "cuda-fp16.h5"), "--out", str(tmp_path / "m")]) == 2
    assert "mixed precision" in capsys.readouterr().err


def test_train_and_finetune_run_on_cuda(tmp_path):
    from graft.cli import main
    from graft.inference.predictor import load

    data = make_dataset(tmp_path / "data", n_per_class=10)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", str(data), "--out", str(tmp_path / "trained"), *TINY_ARGS, *cache,
                 "--device", "cuda"]) == 0
    assert main(["finetune", str(data), "--out", str(tmp_path / "tuned"), *TINY_ARGS,
                 "--device", "cuda", "--epochs", "2", "--fine-tune-epochs", "1",
                 "--batch-size", "8", "--workers", "0"]) == 0
    for name in ("trained", "tuned"):  # both saved as the CPU runtime's ONNX model directory
        probabilities = load(tmp_path / name).predict_proba([data / "red" / "red_000.jpg"])
        assert probabilities.shape == (1, 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_ray_gpu_actors_equal_local_cuda(tmp_path):
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("ray")
    data = make_dataset(tmp_path / "data", n_per_class=14)
    # a script of its own: its cluster has the GPU (the module-wide test cluster has none)
    script = textwrap.dedent(f"""
        import ray, sys
        from graft.cli import main
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
        args = {[*TINY_ARGS, "--device", "cuda", "--batch-size", "16"]!r}
        for precision in ("fp32", "fp16"):
            for engine in ("local", "ray"):
                out = {str(tmp_path)!r} + f"/{{engine}}-{{precision}}.h5"
                code = main(["extract", {str(data)!r}, "--out", out, *args, "--engine", engine,
                             "--precision", precision, "--cache-dir",
                             {str(tmp_path)!r} + f"/cache-{{engine}}"])
                if code:
                    sys.exit(code)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)
    for precision, bound in (("fp32", 1e-4), ("fp16", 5e-3)):
        local, remote = (load_feature_file(tmp_path / f"{engine}-{precision}.h5")
                         for engine in ("local", "ray"))
        assert remote.paths == local.paths and len(remote.paths) == 42
        assert remote.key == local.key
        assert _relative(remote.features, local.features) < bound
