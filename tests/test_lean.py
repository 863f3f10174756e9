"""The runtime is lean: loading a model, predicting and evaluating never import the training stack,
and a runtime-only install (the base package in a fresh virtual environment) predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from conftest import TINY, make_dataset, make_image

from graft.cli import main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "sklearn", "skl2onnx", "matplotlib", "onnx")

# Makes every heavy module unimportable, as if it were not installed, then runs the code.
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    HEAVY = {HEAVY!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} is blocked: imported on the prediction path")
    sys.meta_path.insert(0, Block())
""")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lean")
    data = make_dataset(root / "colors", n_per_class=8)
    model = root / "model"
    assert main(["train", str(data), "--out", str(model), "--backbone", TINY, "--weights",
                 "random", "-q"]) == 0
    probe = make_image(root / "probe.png", (40, 60, 200), seed=7)
    return model, data, probe


def _run(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=REPO, **kwargs)


def test_predict_and_evaluate_run_without_the_training_stack(model):
    model_dir, data, probe = model
    code = f"""
        import graft
        from graft.cli import main
        predictor = graft.load({str(model_dir)!r})
        print(predictor({str(probe)!r}, top_k=1)[0]["label"])
        assert main(["predict", {str(model_dir)!r}, {str(probe)!r}, "--json"]) == 0
        assert main(["evaluate", {str(model_dir)!r}, {str(data)!r}, "-q", "--json"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not loaded, loaded
    """
    result = _run(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "blue"
    assert json.loads(lines[1])["predictions"][0]["label"] == "blue"


def test_training_commands_name_the_missing_extra(model):
    model_dir, data, _ = model
    code = f"""
        from graft.cli import main
        import graft
        sys.exit(main(["train", {str(data)!r}, "--out", "x"]))
    """
    result = _run(code)
    assert result.returncode == 2
    assert "pip install 'graft[train]'" in result.stderr and "Traceback" not in result.stderr
    result = _run(f"import graft\ngraft.ImageClassifier()\n")
    assert "pip install 'graft[train]'" in result.stderr


def test_report_needs_the_report_extra(model, tmp_path):
    model_dir, data, _ = model
    code = f"""
        from graft.cli import main
        sys.exit(main(["evaluate", {str(model_dir)!r}, {str(data)!r}, "-q",
                       "--report", {str(tmp_path / "r")!r}]))
    """
    result = _run(code)
    assert result.returncode == 2 and "pip install 'graft[report]'" in result.stderr


@pytest.mark.slow
def test_runtime_only_install_predicts(model, tmp_path):
    """The base package alone, in a fresh virtual environment: predict works, train explains."""
    model_dir, data, probe = model
    env_dir = tmp_path / "runtime-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                            f"{HEAVY!r} if u.find_spec(m)])"], capture_output=True, text=True)
    assert check.stdout.strip() == "[]", "the base install pulled in the training stack"
    graft_cmd = env_dir / "bin" / "graft"
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([str(graft_cmd), "predict", str(model_dir), str(probe), "--json"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["predictions"][0]["label"] == "blue"
    result = subprocess.run([str(graft_cmd), "evaluate", str(model_dir), str(data), "-q"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([str(graft_cmd), "train", str(data)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 2 and "pip install 'graft[train]'" in result.stderr


def test_a_cached_backbone_graph_is_found_without_torch(tmp_path):
    """The second extraction with the same backbone request runs on onnxruntime alone."""
    data = make_dataset(tmp_path / "colors", n_per_class=4)
    env = {**os.environ, "GRAFT_CACHE_DIR": str(tmp_path / "cache")}
    args = [str(data), "--backbone", TINY, "--weights", "random", "-q"]
    first = subprocess.run([sys.executable, "-m", "graft", "extract", *args, "--out",
                            str(tmp_path / "a.h5")], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    code = textwrap.dedent(f"""
        import sys
        from graft.cli import main
        assert main(["extract", *{args!r}, "--out", {str(tmp_path / "b.h5")!r}]) == 0
        assert main(["train", *{args!r}, "--out", {str(tmp_path / "m")!r}]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm"))
        assert not heavy, heavy[:5]
    """)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=REPO)
    assert second.returncode == 0, second.stderr
    import h5py

    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert (a["features"][:] == b["features"][:]).all()
    # A changed weights file is a different request: the backbone is built again.
    from graft.features.known import find_known_engines

    # (the CLI asks for the backbone's own pooling: pool None)
    found = find_known_engines(TINY, layer=None, weights="random", pool=None, image_size=None,
                               cache_dir=tmp_path / "cache", threads=1, default=TINY)
    assert found is not None and found[1][0]["name"] == TINY
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    assert find_known_engines(TINY, layer=None, weights=str(weights), pool=None,
                              image_size=None, cache_dir=tmp_path / "cache", threads=1,
                              default=TINY) is None


def test_the_server_runs_without_the_training_stack(model):
    pytest.importorskip("fastapi")
    import re
    import signal
    import time
    import urllib.request

    model_dir, _, probe = model
    code = f"""
        import atexit
        from graft.cli import main
        atexit.register(lambda: print("heavy:", sorted(
            m for m in sys.modules if m.split(".")[0] in HEAVY), flush=True))
        main(["serve", {str(model_dir)!r}, "--port", "0"])
    """
    process = subprocess.Popen([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO)
    try:
        url = None
        for line in process.stdout:
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                url = match.group(1)
                break
        assert url, "the server did not start"
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/v2/health/ready", timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        with urllib.request.urlopen(urllib.request.Request(
                url + "/predict", data=probe.read_bytes()), timeout=30) as response:
            assert json.loads(response.read())["predictions"][0][0]["label"] == "blue"
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert "heavy: []" in rest, rest
