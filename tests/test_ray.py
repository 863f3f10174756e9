"""`--engine ray` on a real local Ray cluster (ray.init(num_cpus=2)): the same features as a
local run, cached by content, nothing recomputed, a killed run resumes, and predict and evaluate
give what they give locally."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import S3_CREDENTIALS, make_dataset

ray = pytest.importorskip("ray")

from graft.data import assign_splits, scan_dataset
from graft.features import (
    create_engine,
    extract_dataset,
    extract_feature_set,
    load_feature_file,
    open_cache,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    # each node has its own credentials (here dummy ones for the local S3 server), as on a real
    # cluster; the endpoint comes with the driver's filesystem
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": S3_CREDENTIALS})
    yield
    ray.shutdown()


def test_ray_extraction_equals_local_and_is_cached(cluster, tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=14)
    (data / "red" / "broken.jpg").write_bytes(b"not an image")
    dataset = assign_splits(scan_dataset(data))
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "c1")
    local, _ = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                   cache_dir=tmp_path / "local", progress=False)
    remote, report = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                         cache_dir=tmp_path / "ray", progress=False,
                                         engine="ray")
    assert report.n_computed == 42 and [p for p, _ in report.failures] == ["red/broken.jpg"]
    assert remote.paths == local.paths
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)
    again, report = extract_feature_set(dataset, engine, [tiny_backbone.config()],
                                        cache_dir=tmp_path / "ray", progress=False, engine="ray")
    assert report.n_computed == 0 and report.n_cached == 42  # the failure is remembered too
    np.testing.assert_array_equal(again.features, remote.features)


def test_results_reach_the_driver_while_the_job_runs(cluster, tiny_backbone, tmp_path,
                                                     monkeypatch):
    """Batches stream to the driver (and into the cache) as the actors finish them, not once
    decoding is over: decoding is made the slow step here, as with big photos on few CPUs."""
    import time

    from graft.features import ray_engine

    data = make_dataset(tmp_path / "data", n_per_class=80)
    paths = [s.path for s in scan_dataset(data).samples]
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    decoded = tmp_path / "decoded.txt"
    real_decode = ray_engine._decode

    def slow_decode(batch, configs, filesystems):  # local: shipped to the workers by value
        time.sleep(0.2)
        out = real_decode(batch, configs, filesystems)
        with open(decoded, "a") as log:
            log.write(f"{time.time()}\n")
        return out

    monkeypatch.setattr(ray_engine, "_decode", slow_decode)
    arrived, rows = [], 0
    for batch in ray_engine.ray_features(paths, [engine], kind="onnx", batch_size=4):
        arrived.append(time.time())
        rows += len(batch.positions)
    finished = sorted(float(line) for line in decoded.read_text().split())
    assert rows == 240 and len(finished) >= 30
    # a result came while images were still being decoded
    assert arrived[0] < finished[-1], (arrived[0] - finished[0], finished[-1] - finished[0])


def test_ray_reads_images_from_s3(cluster, s3, tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=6)
    (data / "blue" / "broken.jpg").write_bytes(b"not an image")
    uri = s3.upload(data, "ray")
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "c1")
    local, _ = extract_feature_set(assign_splits(scan_dataset(data)), engine,
                                   [tiny_backbone.config()], cache_dir=tmp_path / "local",
                                   progress=False)
    remote, report = extract_feature_set(assign_splits(scan_dataset(uri)), engine,
                                         [tiny_backbone.config()], cache_dir=tmp_path / "ray",
                                         progress=False, engine="ray")
    assert report.n_computed == 18 and [p for p, _ in report.failures] == ["blue/broken.jpg"]
    assert remote.paths == local.paths
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)


KILLED = textwrap.dedent("""
    import os, signal, sys
    import graft.features.extract as extract
    from graft.backbones import create_backbone
    from graft.data import scan_dataset
    from graft.features import create_engine, extract_dataset, open_cache
    from graft.features import ray_engine

    seen = {"n": 0}
    real = ray_engine.ray_features

    def dying(*args, **kwargs):
        for batch in real(*args, **kwargs):
            yield batch
            seen["n"] += 1
            if seen["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a lost node

    ray_engine.ray_features = dying
    backbone = create_backbone("test_efficientnet", weights="random")
    engine = create_engine(backbone, device="cpu", cache_dir=sys.argv[2])
    cache = open_cache(engine, sys.argv[2], shard_size=4)
    extract_dataset(scan_dataset(sys.argv[1]), [engine], [cache], batch_size=4,
                    progress=False, engine="ray")
""")


def test_a_killed_ray_run_resumes(tiny_backbone, tmp_path):
    data = make_dataset(tmp_path / "data", n_per_class=10)
    result = subprocess.run([sys.executable, "-c", KILLED, str(data), str(tmp_path / "cache")],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == -9, result.stderr[-2000:]
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    cache = open_cache(engine, tmp_path / "cache", shard_size=4)
    done = len(cache)
    assert 8 <= done < 30  # the shards written before the kill are there, complete
    _, report = extract_dataset(scan_dataset(data), [engine], [cache], batch_size=4,
                                progress=False)
    assert report.n_cached == done and report.n_computed == 30 - done


DYING_ACTOR = textwrap.dedent("""
    import os, sys
    import ray
    from graft.backbones import create_backbone
    from graft.data import scan_dataset
    from graft.errors import ClusterError
    from graft.features import create_engine, extract_dataset, open_cache
    from graft.features import ray_engine

    data, cache_dir, marker, mode = sys.argv[1:5]

    class Dying(ray_engine._Embed):  # defined here, so Ray ships it by value to the actors
        def __call__(self, batch):
            if mode == "always" or not os.path.exists(marker):
                open(marker, "a").close()
                os._exit(1)  # the actor's process dies mid-batch, as on a lost node
            return super().__call__(batch)

    ray_engine._Embed = Dying
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    engine = create_engine(create_backbone("test_efficientnet", weights="random"), device="cpu",
                           cache_dir=cache_dir)
    cache = open_cache(engine, cache_dir)
    try:
        _, report = extract_dataset(scan_dataset(data), [engine], [cache], batch_size=4,
                                    progress=False, engine="ray")
    except ClusterError as error:
        print("ClusterError:", error)
        sys.exit(3)
    print("computed", report.n_computed)
""")


@pytest.mark.parametrize("mode", ["once", "always"])
def test_a_dead_actor_is_replaced_and_never_hangs_the_job(tmp_path, mode):
    data = make_dataset(tmp_path / "data", n_per_class=4)
    marker = tmp_path / "died"
    result = subprocess.run([sys.executable, "-c", DYING_ACTOR, str(data), str(tmp_path / "c"),
                             str(marker), mode], cwd=REPO, capture_output=True, text=True,
                            timeout=240, check=False)
    assert marker.exists()  # an actor did die
    if mode == "once":  # restarted, its batch retried: every image computed
        assert result.returncode == 0 and "computed 12" in result.stdout, result.stderr[-2000:]
    else:  # dies every time: a clear error once the restarts are spent, not a hang
        assert result.returncode == 3, result.stderr[-2000:]
        assert "The Ray job failed" in result.stdout and "run the command again" in result.stdout


def test_the_cli_extracts_and_trains_on_ray(cluster, tmp_path, monkeypatch):
    import graft.features.extract as extract_module
    from graft.cli import main

    data = make_dataset(tmp_path / "data", n_per_class=6)
    tiny = ["--backbone", "test_efficientnet", "--weights", "random", "-q"]
    args = [*tiny, "--engine", "ray", "--cache-dir", str(tmp_path / "cache")]
    monkeypatch.setattr(extract_module, "_STREAM_ROWS", 2)  # Ray jobs of 8 listed images: 3
    assert main(["extract", str(data), "--out", str(tmp_path / "f.h5"), *args]) == 0
    assert main(["extract", str(data), "--out", str(tmp_path / "local.h5"), *tiny,
                 "--cache-dir", str(tmp_path / "local")]) == 0
    remote, local = (load_feature_file(tmp_path / name) for name in ("f.h5", "local.h5"))
    assert remote.paths == local.paths and len(remote.paths) == 18
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)
    assert main(["train", str(data), "--out", str(tmp_path / "model"), *args]) == 0
    assert (tmp_path / "model" / "graft.json").is_file()


def test_torch_actors_equal_local_torch_and_gpus_are_asked_for(cluster, tmp_path, capsys):
    """--device torch: the actors run the torch network itself (sent once through the object
    store), as with --device cuda but on CPU (decoding in the actors); --device cuda on a
    cluster with no GPU says so."""
    from graft.cli import main

    data = make_dataset(tmp_path / "data", n_per_class=6)
    tiny = ["--backbone", "test_efficientnet", "--weights", "random", "-q", "--device", "torch"]
    assert main(["extract", str(data), "--out", str(tmp_path / "ray.h5"), *tiny, "--engine",
                 "ray", "--cache-dir", str(tmp_path / "ray")]) == 0
    assert main(["extract", str(data), "--out", str(tmp_path / "local.h5"), *tiny,
                 "--cache-dir", str(tmp_path / "local")]) == 0
    remote, local = (load_feature_file(tmp_path / name) for name in ("ray.h5", "local.h5"))
    assert remote.paths == local.paths and len(remote.paths) == 18
    np.testing.assert_allclose(remote.features, local.features, atol=1e-5)
    capsys.readouterr()
    gpu = ["--backbone", "test_efficientnet", "--weights", "random", "-q", "--device", "cuda",
           "--engine", "ray", "--cache-dir", str(tmp_path / "gpu")]
    assert main(["extract", str(data), "--out", str(tmp_path / "gpu.h5"), *gpu]) == 2
    assert "this cluster has none" in capsys.readouterr().err
    assert main(["extract", str(data), "--out", str(tmp_path / "gpu.h5"), *gpu,
                 "--precision", "fp16"]) == 2
    assert "this cluster has none" in capsys.readouterr().err


def test_decoding_tasks_that_feed_the_actors_give_the_same_features(cluster, tiny_backbone,
                                                                    tmp_path):
    """The pipeline of GPU actors (stateless tasks decode, the actors only run the network) run
    with CPU actors here: the same features, in the same rows, as actors that decode."""
    from pathlib import Path as _Path

    from graft.features import ray_engine

    data = make_dataset(tmp_path / "data", n_per_class=5)
    (data / "red" / "broken.jpg").write_bytes(b"not an image")
    paths = [s.path for s in scan_dataset(data).samples]
    engine = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path / "cache")
    specs = [{"key": engine.key, "preprocess": engine.preprocess.to_dict(),
              "num_features": engine.num_features, "kind": "onnx", "precision": "fp32"}]
    graphs = [ray.put(_Path(engine.path).read_bytes())]
    results = {}
    for kind in ("gpu", "onnx"):  # decoding tasks, then decoding in the actors
        manifest = ray.data.from_items(ray_engine._Manifest(paths), override_num_blocks=4)
        dataset = ray_engine._pipeline(manifest, kind, specs, graphs, {}, 4, 1, 1,
                                       {"num_cpus": 1})
        rows, reasons = {}, {}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for position, reason, features in zip(batch["position"], batch["reason"],
                                                  batch["features_0"]):
                rows[int(position)], reasons[int(position)] = features, str(reason)
        assert sorted(rows) == list(range(len(paths)))
        results[kind] = (np.stack([rows[i] for i in range(len(paths))]),
                         [reasons[i] for i in range(len(paths))])
    np.testing.assert_array_equal(results["gpu"][0], results["onnx"][0])
    assert results["gpu"][1] == results["onnx"][1]
    assert sum(bool(r) for r in results["gpu"][1]) == 1  # the broken file, in both


def test_the_engine_kind_is_given_and_checked(tiny_backbone, tmp_path):
    from graft.errors import ConfigError
    from graft.features import ray_engine

    onnx = create_engine(tiny_backbone, device="cpu", cache_dir=tmp_path)
    torch = create_engine(tiny_backbone, device="torch")
    assert ray_engine.ray_kind([onnx]) == "onnx" and ray_engine.ray_kind([torch]) == "torch"
    with pytest.raises(ConfigError, match="the same way"):
        ray_engine.ray_kind([onnx, torch])
    with pytest.raises(ConfigError, match="kind='torch' does not match engines"):
        next(ray_engine.ray_features(["a.jpg"], [onnx], kind="torch"))
    with pytest.raises(ConfigError, match="kind must be one of onnx, torch, gpu"):
        next(ray_engine.ray_features(["a.jpg"], [onnx], kind="cuda"))


def test_ray_devices_are_the_actors_not_the_drivers(tmp_path):
    """The driver's devices do not decide for the cluster (none are looked at): --engine ray with
    --device auto builds ONNX engines (CPU actors); --device cuda builds torch engines that the
    driver keeps on its CPU, here on a machine with no GPU."""
    from graft.workflows._common import build_backbones

    common = {"layer": None, "weights": "random", "pool": "avg", "image_size": None,
              "cache_dir": tmp_path}
    (auto,) = build_backbones("test_efficientnet", device="auto", engine="ray", **common)
    assert hasattr(auto.engine, "path")  # an exported ONNX graph
    (cuda,) = build_backbones("test_efficientnet", device="cuda", engine="ray", **common)
    assert cuda.engine.target == "cuda"
    assert next(cuda.engine.model.parameters()).device.type == "cpu"


def test_predict_and_evaluate_on_ray_equal_local(cluster, tmp_path, monkeypatch):
    import json

    from graft.cli import main
    from graft.workflows.evaluate import evaluate
    from graft.workflows.predict import predict

    data = make_dataset(tmp_path / "data", n_per_class=8)
    model = tmp_path / "model"
    assert main(["train", str(data), "--out", str(model), "--backbone", "test_efficientnet",
                 "--weights", "random", "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    (data / "green" / "broken.png").write_bytes(b"\x89PNG truncated")
    images = [data, data / "red" / "red_000.jpg"]  # a folder, then a file again: order is kept
    local = [p.to_dict() for p in predict(model, images, top_k=2, batch_size=5)]
    counted = []
    from graft.features import ray_engine

    monkeypatch.setattr(ray_engine, "PREDICT_PART", 10)  # Ray jobs of 10, 10 and 6 paths
    remote = [p.to_dict() for p in predict(model, images, top_k=2, batch_size=5, engine="ray",
                                           on_result=counted.append)]
    assert [r["path"] for r in remote] == [r["path"] for r in local] and len(local) == 26
    assert sum(counted) == 26
    # the order was asked of those jobs' datasets, not of every later Ray Data job
    assert not ray.data.DataContext.get_current().execution_options.preserve_order
    for mine, theirs in zip(remote, local):
        assert ("error" in mine) == ("error" in theirs)
        if "error" in theirs:
            assert mine["error"] == theirs["error"]
            continue
        assert [p["label"] for p in mine["predictions"]] == \
            [p["label"] for p in theirs["predictions"]]
        np.testing.assert_allclose([p["score"] for p in mine["predictions"]],
                                   [p["score"] for p in theirs["predictions"]], atol=1e-5)
    (data / "green" / "broken.png").unlink()
    scored = {}
    for engine in ("local", "ray"):
        result = evaluate(model, data, split="all", cache_dir=tmp_path / f"eval-{engine}",
                          progress=False, engine=engine)
        assert result.extraction.n_computed == 24
        scored[engine] = result.metrics
    assert json.dumps(scored["ray"]["confusion_matrix"]) == \
        json.dumps(scored["local"]["confusion_matrix"])
    assert scored["ray"]["accuracy"] == scored["local"]["accuracy"]
    assert main(["predict", str(model), str(data), "--engine", "ray", "--json", "-q"]) == 0
