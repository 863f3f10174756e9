"""``engine="ray"``: decode and run the backbone graphs on a Ray cluster, with Ray Data.

The driver lists the images and drops those already cached; a manifest of the rest (blocks of
paths, put in the object store by the driver) is read by Ray Data; decoding and preprocessing
use the same :func:`preprocess` as local runs, so the same bytes reach the network; an actor
pool runs the backbones (the exported ONNX graphs, or torch networks, sent once through the
object store). On CPUs each actor decodes its own batches and runs its graph on one thread, one
actor per CPU; for GPU actors, stateless CPU tasks decode and feed them. Results stream back to
the driver, which alone writes the HDF5 cache (one writer), a shard at a time: a killed run
keeps what was written, and the next run computes only the rest. Images may be on ``s3://``
(or ``gs://``, ``hdfs://``): the driver lists them, the workers read them.

Batch prediction (:func:`ray_predictions`) runs the same backbone graphs on the cluster, in the
order given; the driver applies the model's head (a features x classes graph, microseconds per
image) and writes the results as they arrive.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.bundle.fusion import fuse_features
from graft.data.preprocess import PreprocessConfig
from graft.data.storage import adopt, filesystems_for
from graft.errors import ClusterError, ConfigError
from graft.extras import require
from graft.features.engine import TorchEngine
from graft.inference.batches import iter_decoded_batches
from graft.inference.engine import OnnxEngine
from graft.inference.predictor import Prediction

__all__ = ["ACTOR_RESTARTS", "KINDS", "RayBatch", "connect", "ray_features", "ray_kind",
           "ray_predictions"]

# An actor that dies (its node lost, the process killed) is restarted and its batch retried, this
# many times; after that the job fails with a ClusterError instead of retrying for ever.
ACTOR_RESTARTS = 3
# How the actors run the backbones: exported ONNX graphs on CPU, eager torch on CPU, torch on GPU.
KINDS = ("onnx", "torch", "gpu")


@dataclass
class RayBatch:
    """Features of some images, computed on the cluster (rows in ``positions`` order)."""

    positions: np.ndarray        # indices into the list of paths given to ray_features
    features: list[np.ndarray]   # one (N, D_j) block per engine
    failures: list[tuple[int, str]]  # (position, reason) of images that could not be decoded


def connect(address: str | None = None) -> Any:
    """Join the cluster at ``address`` (``auto``, ``ray://...``, ``host:port``; default
    ``$RAY_ADDRESS``, else a local cluster on this machine's CPUs)."""
    require("ray", command="engine='ray'", parameter="engine")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # Ray's C++ log lines stay off stderr
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise ConfigError(f"Cannot reach a Ray cluster at {address!r}: {error}. Start one "
                              f"('ray start --head') or leave address out for a local "
                              f"one.", parameter="address") from None
        # Leave it when this process ends, before Ray's own exit handler (atexit runs the
        # last registered first), which waits for log lines that log_to_driver=False never
        # sends (the fixed cost in benchmarks/ray_extract.py).
        atexit.register(ray.shutdown)
    _quiet()
    ray.data.DataContext.get_current().enable_progress_bars = False  # graft shows its own
    return ray


def _quiet() -> None:
    """Ray Data's own log lines off stderr: graft reports progress itself."""
    import logging

    for name in ("ray.data", *(n for n in logging.root.manager.loggerDict
                               if n.startswith("ray.data."))):
        logging.getLogger(name).setLevel(logging.ERROR)


def _decode(batch: dict[str, np.ndarray], configs: list[dict],
            filesystems: dict[str, Any]) -> dict[str, np.ndarray]:
    """One Ray Data batch of paths -> prepared images (zeros and a reason where one failed),
    through the same decoding loop as local extraction (remote paths read through the driver's
    filesystems)."""
    adopt(filesystems)
    prepared = [PreprocessConfig.from_dict(c) for c in configs]
    n = len(batch["path"])
    images = [np.zeros((n, c.input_size[1], c.input_size[2], 3), np.uint8) for c in prepared]
    reasons = np.array([""] * n, dtype=object)
    for decoded in iter_decoded_batches(enumerate(batch["path"]), prepared,
                                        batch_size=max(1, n), workers=0,
                                        source_of=lambda item: str(item[1])):
        rows = [row for row, _ in decoded.items]
        for j, block in enumerate(decoded.images):
            images[j][rows] = block
        for (row, _), reason in decoded.failures:
            reasons[row] = reason
    out = {"position": batch["position"], "reason": reasons}
    out.update({f"image_{j}": block for j, block in enumerate(images)})
    return out


class _Embed:
    """One actor: the networks loaded once. An ONNX graph runs on ``threads`` images at a time
    (one ONNX Runtime thread each); a torch network runs on the actor's GPU (Ray gives it one and
    shows it as ``cuda``), or on ``threads`` CPU threads. With ``decode`` (a function and its
    keyword arguments), batches arrive as paths and the actor decodes them first."""

    def __init__(self, graphs: list[Any], engines: list[dict], threads: int,
                 decode: tuple[Any, dict] | None = None) -> None:
        import ray

        self.decode = decode
        self._folder = tempfile.mkdtemp(prefix="graft-ray-")
        self.engines = []
        for j, (graph, spec) in enumerate(zip(graphs, engines)):
            common = {"key": spec["key"], "num_features": spec["num_features"],
                      "preprocess": PreprocessConfig.from_dict(spec["preprocess"])}
            if spec["kind"] != "onnx":
                self.engines.append(_torch_engine(ray.get(graph), spec, threads, common))
                continue
            path = Path(self._folder) / f"graph{j}.onnx"
            path.write_bytes(ray.get(graph))
            self.engines.append(OnnxEngine(path, threads=threads, **common))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode is not None:
            function, arguments = self.decode
            batch = function(batch, **arguments)
        ok = np.array([not r for r in batch["reason"]], dtype=bool)
        out = {"position": batch["position"], "reason": batch["reason"]}
        for j, engine in enumerate(self.engines):
            features = np.zeros((len(ok), engine.num_features), np.float32)
            if ok.any():
                features[ok] = engine(np.ascontiguousarray(batch[f"image_{j}"][ok]))
            out[f"features_{j}"] = features
        return out


def _torch_engine(model: Any, spec: dict, threads: int, common: dict) -> Any:
    """A torch network on this actor: its GPU for ``cuda``, else ``threads`` CPU threads."""
    import torch

    device = "cuda" if spec["kind"] == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClusterError("A Ray actor given a GPU sees no CUDA device (torch "
                           f"{torch.__version__}, CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}).")
    if device == "cpu":
        torch.set_num_threads(threads)
    return TorchEngine(model, device=device, precision=spec["precision"], **common)


def ray_kind(engines: Sequence[Any]) -> str:
    """How the actors run ``engines`` (one of :data:`KINDS`): ``onnx`` for exported graphs,
    ``gpu`` for torch engines whose ``target`` is CUDA, ``torch`` for torch on CPU."""
    kinds = set()
    for engine in engines:
        if isinstance(engine, OnnxEngine):
            kinds.add("onnx")
        elif isinstance(engine, TorchEngine):
            kinds.add("gpu" if engine.target.startswith("cuda") else "torch")
        else:
            raise ConfigError(f"engines: the Ray engine runs an OnnxEngine or a TorchEngine, "
                              f"not a {type(engine).__name__}.", parameter="engines")
    if len(kinds) != 1:
        raise ConfigError("engines: the Ray engine runs every backbone the same way; give them "
                          f"one device (got {', '.join(sorted(kinds)) or 'none'}).",
                          parameter="engines")
    return kinds.pop()


def ray_features(paths: Sequence[str], engines: Sequence[Any], *, kind: str,
                 batch_size: int = 32, address: str | None = None, ordered: bool = False,
                 resumable: bool = True) -> Iterator[RayBatch]:
    """Features of ``paths`` for each engine, computed on Ray.

    Args:
        kind: How the actors run ``engines``, one of :data:`KINDS` (:func:`ray_kind` says):
            ``onnx`` engines have their graph on disk, ``torch`` and ``gpu`` ones a network.
        ordered: Batches in the order of ``paths`` (Ray Data's ``preserve_order``, set on this
            job's dataset only), else as they are done.
        resumable: The caller keeps what arrived (the cache), which the error on a failed job
            then says.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}. Got {kind!r}.",
                          parameter="kind")
    if not paths:
        return
    given = ray_kind(engines)
    if given != kind:
        raise ConfigError(f"kind={kind!r} does not match engines, which run as {given!r}.",
                          parameter="kind")
    ray = connect(address)
    actors, threads, resources = _actor_pool(ray, kind)
    specs = [_spec(engine, kind) for engine in engines]
    # once, not per task: the ONNX graph's bytes, or the torch network (on this process's CPU)
    graphs = [ray.put(Path(e.path).read_bytes() if kind == "onnx" else e.model)
              for e in engines]
    # s3://... paths: the driver's filesystems (endpoint and options; credentials stay each
    # node's own), as Ray Data passes its `filesystem` argument
    filesystems = filesystems_for(paths)
    dataset = _pipeline(_manifest(ray, paths, batch_size, ordered), kind, specs, graphs,
                        filesystems, batch_size, actors, threads, resources)
    _quiet()  # Ray Data configures its loggers when first used: quiet them again
    yield from _results(ray, dataset, len(engines), resumable)


def _spec(engine: Any, kind: str) -> dict[str, Any]:
    """What an actor needs to rebuild ``engine``. A torch engine goes with its fp32 key and its
    precision, which the actor applies again (and so gets the same key as here)."""
    torch = kind != "onnx"
    return {"key": engine.fp32_key if torch else engine.key,
            "preprocess": engine.preprocess.to_dict(), "num_features": engine.num_features,
            "kind": kind, "precision": engine.precision if torch else "fp32"}


def _actor_pool(ray: Any, kind: str) -> tuple[int, int, dict[str, float]]:
    """The number of actors, each one's threads and each one's resources, for ``kind``."""
    if kind != "gpu":
        # One actor per CPU, each decoding its own batches and running its graph on one thread:
        # no decoded image crosses the object store, and nothing else needs a CPU (the manifest
        # is in the object store already; the driver writes the cache), so none starves
        # (benchmarks/ray_extract.py).
        return int(ray.cluster_resources().get("CPU", 1)), 1, {"num_cpus": 1}
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise ConfigError("device='cuda' with engine='ray' runs the backbones on the cluster's "
                          "GPUs, and this cluster has none: leave device out (CPU actors) or "
                          "add GPU nodes.", parameter=("device", "engine"))
    return gpus, 1, {"num_cpus": 1, "num_gpus": 1}  # one actor per GPU, with a CPU to feed it


def _manifest(ray: Any, paths: Sequence[str], batch_size: int, ordered: bool) -> Any:
    """The manifest (path, position) as blocks of at most a batch each (more past 4,096
    batches), built and put in the object store by this process: results (and cache shards)
    arrive while the run goes on, and every node can read it (a file in this process's
    temporary folder is not on the other nodes)."""
    count = max(1, min(-(-len(paths) // batch_size), 4096))
    manifest = ray.data.from_items(_Manifest(paths), override_num_blocks=count)
    # On the dataset's own context (from_items copies the current one; what is built on the
    # manifest shares it): the order is this job's choice, and the process's setting stays.
    manifest.context.execution_options.preserve_order = ordered
    return manifest


def _results(ray: Any, dataset: Any, n_engines: int, resumable: bool) -> Iterator[RayBatch]:
    """The actors' batches as they come. No further operator: a select_columns step ran as
    tasks of 1 CPU each, which found no free CPU until decoding was over, so nothing reached
    this process, or the cache, before then."""
    batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    while True:
        try:
            batch = next(batches, None)
        except ray.exceptions.RayError as error:
            kept = (" Everything finished before it is kept: run the command again to go on "
                    "from there." if resumable else "")
            raise ClusterError(f"The Ray job failed: {_first_line(error)}.{kept}") from None
        if batch is None:
            return
        reasons = batch["reason"]
        ok = np.array([not r for r in reasons], dtype=bool)
        yield RayBatch(
            positions=batch["position"][ok],
            features=[np.asarray(batch[f"features_{j}"], np.float32)[ok]
                      for j in range(n_engines)],
            failures=[(int(p), str(r)) for p, r in zip(batch["position"][~ok],
                                                       reasons[~ok])])


class _Manifest(Sequence):
    """The rows of the manifest, made as ``from_items`` reads them (no list of dicts held)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        return {"path": str(self.paths[index]), "position": index}


def _pipeline(manifest: Any, kind: str, specs: list[dict], graphs: list[Any],
              filesystems: dict[str, Any], batch_size: int, actors: int, threads: int,
              resources: dict[str, float]) -> Any:
    """The Ray Data pipeline: the manifest -> decoding -> the actor pool (decoding in the
    actors on CPUs, in stateless CPU tasks that feed GPU actors)."""
    from ray.data import ActorPoolStrategy

    decoding = {"configs": [s["preprocess"] for s in specs], "filesystems": filesystems}
    dataset = manifest
    if kind == "gpu":
        dataset = dataset.map_batches(_decode, fn_kwargs=decoding, batch_size=batch_size,
                                      batch_format="numpy", num_cpus=0.5)
    with warnings.catch_warnings():
        # Ray 2.5x-2.63 warn that extra remote args are deprecated (2.64 drops them; the ray
        # extra pins below it), and no named parameter sets the restarts.
        warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
        dataset = dataset.map_batches(_Embed, fn_constructor_kwargs={
            "graphs": graphs, "engines": specs, "threads": threads,
            "decode": None if kind == "gpu" else (_decode, decoding)},
            compute=ActorPoolStrategy(min_size=1, max_size=actors), **resources,
            batch_size=batch_size, batch_format="numpy", max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS)
    return dataset


def _first_line(error: BaseException) -> str:
    """The gist of a Ray exception (its text runs to a remote traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Traceback", "File ", "ray::"))]
    return (useful or lines or [type(error).__name__])[0][:300]

PREDICT_PART = 65536  # paths per Ray job in ray_predictions: what the driver holds at a time


def ray_predictions(predictor: Any, paths: Iterable[str | os.PathLike], *, top_k: int = 5,
                    address: str | None = None, on_result: Any = None) -> Iterator[Any]:
    """:meth:`graft.inference.Predictor.predict_paths` with the backbones run on Ray: the same
    :class:`~graft.inference.Prediction` per path, in the order given (Ray Data keeps the order;
    a result that still arrives early waits for the ones before it). ``paths`` is read
    :data:`PREDICT_PART` at a time, one Ray job each, so a stream of paths is never held whole."""
    if int(top_k) < 1:
        raise ConfigError(f"top_k must be >= 1. Got {top_k!r} instead.", parameter="top_k")
    part: list[str] = []
    for path in paths:
        part.append(os.fspath(path))
        if len(part) == PREDICT_PART:
            yield from _predict_part(predictor, part, top_k, address, on_result)
            part = []
    if part:
        yield from _predict_part(predictor, part, top_k, address, on_result)


def _predict_part(predictor: Any, names: list[str], top_k: int, address: str | None,
                  on_result: Any) -> Iterator[Any]:
    waiting: dict[int, Any] = {}  # results that arrived before an earlier one
    following = 0  # the position to yield next
    for batch in ray_features(names, predictor.engines, kind="onnx",
                              batch_size=predictor.batch_size, address=address, ordered=True,
                              resumable=False):
        for position, reason in batch.failures:
            waiting[int(position)] = Prediction(names[position], error=reason)
        if len(batch.positions):
            probabilities = predictor.probabilities_from_features(fuse_features(batch.features))
            ranked = predictor.postprocess(probabilities, top_k)
            for position, top in zip(batch.positions, ranked):
                waiting[int(position)] = Prediction(names[position], predictions=top)
        done = 0
        while following in waiting:
            yield waiting.pop(following)
            following += 1
            done += 1
        if on_result is not None and done:
            on_result(done)
    if following != len(names):
        raise ClusterError(f"The Ray job returned {following:,} of {len(names):,} results in "
                           f"order (missing: {names[following]}); nothing after it was written.")
