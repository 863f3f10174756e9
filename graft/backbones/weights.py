"""Finding and loading pretrained weights: shipped packages, local files, URLs, the model hub."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch

from graft.errors import WeightsError

__all__ = [
    "apply_state_dict",
    "download_weights",
    "hub_reachable",
    "load_state_dict_file",
    "packaged_weights_path",
    "state_dict_sha256",
]

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")


def packaged_weights_path(module: str, relative: str) -> Path | None:
    """Path of a weights file shipped inside an installed Python package, or None if not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin`` (never unpickling code) or ``.safetensors``.

    Common wrappers are unpacked (``{"state_dict": ...}``, ``{"model": ...}``) and a
    ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist. Check the weights=PATH given.",
                           parameter="weights")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".keras"):
        raise WeightsError(
            f"{path}: Keras .h5 weights need a Keras-aware backbone; this backbone takes "
            f"PyTorch .pth/.pt/.bin or .safetensors state dicts."
        )
    if path.stat().st_size == 0:
        raise WeightsError(f"Weights file {path} is empty. Check the weights=PATH given.",
                           parameter="weights")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error type and OSError
            reason = _first_line(str(exc))
            raise WeightsError(
                f"Cannot read weights from {path}: it is not a valid .safetensors file"
                f"{f' ({reason})' if reason else ''}. Check the weights=PATH given, or pass a "
                f"PyTorch .pth/.pt/.bin state dict instead.", parameter="weights"
            ) from exc
    else:
        try:
            # weights_only=True: a checkpoint from someone else cannot run code while loading.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise WeightsError(
                f"Cannot read weights from {path}: {_torch_load_reason(exc)}. Expected a PyTorch "
                f"state dict (saved with torch.save(model.state_dict(), path)) or a .safetensors "
                f"file; check the weights=PATH given.", parameter="weights"
            ) from exc
    for _ in range(2):
        if isinstance(state, Mapping):
            inner = next((state[k] for k in _CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
            if inner is not None:
                state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{path} does not hold a state dict of tensors (found {type(state).__name__}). "
            f"Save weights with torch.save(model.state_dict(), path)."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _first_line(text: str, limit: int = 120) -> str:
    """A short first line of a library's error message, or "" when it has none fit to show.

    torch's messages run over many lines and advise loading with ``weights_only=False``, which
    would let the file run code: that advice must never reach users.
    """
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()
    first = lines[0].strip().rstrip(".") if lines else ""
    if "weights_only" in first or not re.search("[A-Za-z]{3}", first):
        return ""  # unsafe advice, or no words (a KeyError's bare byte value)
    return first if len(first) <= limit else first[: limit - 3].rstrip() + "..."


def _torch_load_reason(exc: Exception) -> str:
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (f"it stores pickled Python objects (such as {unsafe.group(1)}), not only tensors, "
                f"and loading those could run code")
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)  # e.g. "Unsupported operand 249"
    first = _first_line(detail.group(1) if detail else text)
    return "it is not a PyTorch checkpoint" + (f" ({first})" if first else "")


def apply_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     optional: tuple[str, ...] = ()) -> str:
    """Load ``state`` into ``model``; return how the keys were matched (``"names"`` or ``"order"``).

    Keys are matched by name first. Checkpoints from another implementation of the same network
    (torchvision or lukemelas EfficientNet into timm) use other names for the same tensors in the
    same order, so when every tensor's shape matches in order, they are matched by position.
    Tensors under an ``optional`` prefix (a classifier graft cuts off) are neither required nor
    compared: loaded when they fit, else zeroed, so the weights' hash stays the same from run
    to run. Anything else is an error that says what did not fit.
    """
    target = model.state_dict()
    skip = tuple(prefix + "." for prefix in optional)
    needed = [k for k in target if not k.startswith(skip)]
    given = {k: v for k, v in state.items() if not k.startswith(skip)}
    if set(given) == set(needed) and all(given[k].shape == target[k].shape for k in needed):
        fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
        with torch.no_grad():
            for key in set(target) - set(fitting):  # a classifier the file has not (or not so)
                fitting[key] = torch.zeros_like(target[key])
        model.load_state_dict(fitting)
        return "names"
    src_keys, dst_keys = list(state), list(target)
    if len(src_keys) == len(dst_keys) and all(
        state[a].shape == target[b].shape for a, b in zip(src_keys, dst_keys)
    ):
        model.load_state_dict({b: state[a] for a, b in zip(src_keys, dst_keys)})
        return "order"
    missing = [k for k in needed if k not in state][:5]
    shape_bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
        for k in needed if k in state and state[k].shape != target[k].shape
    ][:5]
    raise WeightsError(
        f"The weights in {source} do not fit this network ({len(src_keys)} tensors in the file, "
        f"{len(dst_keys)} in the model). Missing keys: {missing or 'none'}; shape mismatches: "
        f"{shape_bad or 'none'}. Check that backbone names the network they were trained "
        f"for.", parameter="backbone"
    )


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's tensors (names, dtypes, shapes and values), independent of the file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def download_weights(url: str, cache_dir: Path, sha256: str | None = None) -> Path:
    """Download ``url`` into ``cache_dir/weights`` once (atomic rename), verifying ``sha256`` if given."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or "weights.pth"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache_dir / "weights" / f"{key}-{name}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256.lower():
            raise WeightsError(
                f"Downloaded {url} but its SHA-256 is {digest.hexdigest()}, expected {sha256}. "
                f"The file changed or the download was corrupted; try again."
            )
        os.replace(tmp, target)
    except WeightsError:
        raise
    except OSError as exc:
        raise WeightsError(
            f"Cannot download {url} ({exc}). Check the network, or download the "
            f"file yourself and pass its path as weights.", parameter="weights"
        ) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Quick check that the model hub answers, so an offline machine fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        host = urllib.parse.urlparse(endpoint).hostname or host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False

