"""The Open Inference Protocol v2 (KServe / Triton REST) for graft models.

A model takes one input, ``image``: ``BYTES`` of shape ``[N]`` (``[N, 1]`` is accepted too), each
element an encoded image: raw bytes with the binary tensor extension, or base64 text (JSON
requests have no other way to carry bytes). It has one output, ``probabilities``: ``FP32``
``[N, C]``; with the classification extension (``"parameters": {"classification": k}``) it is
``BYTES`` ``[N, k]`` of ``"score:index:label"`` strings, as Triton formats them. Outputs are
JSON or binary as each output (or the request's ``binary_data_output``) asks; a request with
``Inference-Header-Content-Length: 0`` is one raw image and gets binary outputs.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.responses import Response

from graft.serving.errors import ServeError
from graft.serving.inputs import MAX_IMAGES, decode_base64, load_json

__all__ = ["INPUT", "OUTPUT", "InferRequest", "infer_response", "model_config", "model_metadata",
           "parse_infer"]

INPUT, OUTPUT = "image", "probabilities"
HEADER_LENGTH = "Inference-Header-Content-Length"
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


@dataclass
class _Output:
    name: str
    binary: bool
    classes: int = 0


@dataclass
class InferRequest:
    images: list[bytes]
    outputs: list[_Output] = field(default_factory=list)
    id: str | None = None


def model_metadata(name: str, labels: list[str]) -> dict[str, Any]:
    return {"name": name, "versions": ["1"], "platform": "graft_onnxruntime",
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(labels)]}]}


def model_config(name: str, labels: list[str], max_batch_size: int,
                 max_delay_ms: float) -> dict[str, Any]:
    """Triton's model-configuration shape (the batch dimension is implicit in ``dims``)."""
    return {
        "name": name, "platform": "graft_onnxruntime", "backend": "onnxruntime",
        "max_batch_size": max_batch_size,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE",
                   "dims": [1], "reshape": {"shape": []}}],
        "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [len(labels)],
                    "label_filename": ""}],
        "dynamic_batching": {"preferred_batch_size": [max_batch_size],
                             "max_queue_delay_microseconds": int(max_delay_ms * 1000)},
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": 1}],
        "parameters": {"labels": {"string_value": json.dumps(labels)}},
    }


def _json(data: bytes) -> dict[str, Any]:
    header = load_json(data, "Inference request")
    if not isinstance(header, dict):
        raise ServeError(400, "Inference request must be a JSON object.")
    return header


def _bytes_elements(data: bytes) -> list[bytes]:
    """Triton's BYTES serialization: a little-endian uint32 length before each element."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ServeError(400, "Binary BYTES data ends inside an element's 4-byte length.")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise ServeError(400, f"Binary BYTES element of {length} bytes runs past the data.")
        elements.append(data[offset:offset + length])
        offset += length
    return elements


def _image(element: bytes, where: str) -> bytes:
    """Raw image bytes, or base64 text of them (told apart by the alphabet)."""
    return decode_base64(element, where) if element and _BASE64.fullmatch(element) else element


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def parse_infer(body: bytes, header_length: str | None, max_batch_size: int) -> InferRequest:
    """A v2 inference request -> the images and the outputs asked for."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ServeError(400, f"Bad {HEADER_LENGTH} header {header_length!r}.") from None
        if length == 0:  # the raw binary request: the body is the one input's one element
            if not body:
                raise ServeError(400, "Empty raw binary request: the body must be an image.",
                                 "empty")
            return InferRequest([body], [_Output(OUTPUT, binary=True)])
        if not 0 < length <= len(body):
            raise ServeError(400, f"{HEADER_LENGTH} is {length} but the body has {len(body)} "
                                  f"bytes.")
        header, binary = _json(body[:length]), body[length:]
    else:
        header, binary = _json(body), b""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServeError(400, f"Expected exactly one input, {INPUT!r} (BYTES, shape [N]).")
    spec = inputs[0]
    if spec.get("name") != INPUT:
        raise ServeError(400, f"Unknown input {spec.get('name')!r}: this model's input is "
                              f"{INPUT!r}.")
    if spec.get("datatype") != "BYTES":
        raise ServeError(400, f"Input {INPUT!r} has datatype BYTES (encoded images), not "
                              f"{spec.get('datatype')!r}.", "bad_datatype")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or len(shape) not in (1, 2)
            or not all(isinstance(d, int) and d >= 1 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise ServeError(400, f"Input {INPUT!r} must have shape [N] (or [N, 1]), N >= 1; got "
                              f"{shape!r}.", "bad_shape")
    count = shape[0]
    if count > MAX_IMAGES:
        raise ServeError(413, f"{count} images in one request; at most {MAX_IMAGES}.")
    if count > max_batch_size:
        raise ServeError(400, f"Batch of {count} images is over this model's max_batch_size "
                              f"{max_batch_size}.", "bad_shape")
    parameters = _parameters(spec, f"input {INPUT!r}")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or size != len(binary):
            raise ServeError(400, f"binary_data_size {size!r} does not match the {len(binary)} "
                                  f"bytes after the JSON header.")
        elements = _bytes_elements(binary)
    elif "data" in spec:
        try:
            elements = _flatten(spec["data"])
        except RecursionError:
            raise ServeError(400, f"Input {INPUT!r} data is nested too deeply.") from None
    else:
        raise ServeError(400, f"Input {INPUT!r} has neither 'data' nor binary data.")
    if len(elements) != count:
        raise ServeError(400, f"Input {INPUT!r} has shape {shape} but {len(elements)} "
                              f"elements.", "bad_shape")
    images = [_image(e, f"{INPUT}[{i}]") if isinstance(e, bytes) else
              decode_base64(e, f"{INPUT}[{i}]") for i, e in enumerate(elements)]
    return InferRequest(images, _outputs(header), _request_id(header))


def _request_id(header: dict[str, Any]) -> str | None:
    value = header.get("id")
    return str(value) if value not in (None, "") else None


def _parameters(spec: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = spec.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ServeError(400, f"'parameters' of {where} must be a JSON object.")
    return parameters


def _outputs(header: dict[str, Any]) -> list[_Output]:
    default_binary = bool(_parameters(header, "the request").get("binary_data_output", False))
    requested = header.get("outputs")
    if requested is None:
        return [_Output(OUTPUT, default_binary)]
    if not isinstance(requested, list):
        raise ServeError(400, "'outputs' must be a list.")
    outputs = []
    for spec in requested:
        if not isinstance(spec, dict) or spec.get("name") != OUTPUT:
            name = spec.get("name") if isinstance(spec, dict) else spec
            raise ServeError(400, f"Unknown output {name!r}: this model's output is {OUTPUT!r}.")
        parameters = _parameters(spec, f"output {OUTPUT!r}")
        classes = parameters.get("classification", 0)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
            raise ServeError(400, f"classification must be a count >= 0, got {classes!r}.")
        outputs.append(_Output(OUTPUT, bool(parameters.get("binary_data", default_binary)),
                               classes))
    return outputs


def _classification(probabilities: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    k = min(k, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return np.array([[f"{float(row[j]):f}:{int(j)}:{labels[j]}" for j in best]
                     for row, best in zip(probabilities, order)], dtype=object)


def infer_response(model: str, request: InferRequest, probabilities: np.ndarray,
                   labels: list[str]) -> Response:
    """The v2 response, JSON or JSON plus binary outputs."""
    outputs, blobs = [], []
    for spec in request.outputs:
        if spec.classes:
            values = _classification(probabilities, labels, spec.classes)
            entry: dict[str, Any] = {"name": spec.name, "datatype": "BYTES",
                                     "shape": list(values.shape)}
            if spec.binary:
                blob = b"".join(struct.pack("<I", len(v.encode())) + v.encode()
                                for v in values.ravel())
            else:
                entry["data"] = values.ravel().tolist()
        else:
            values = np.ascontiguousarray(probabilities, dtype="<f4")
            entry = {"name": spec.name, "datatype": "FP32", "shape": list(values.shape)}
            if spec.binary:
                blob = values.tobytes()
            else:
                entry["data"] = values.ravel().tolist()
        if spec.binary:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    text = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return Response(text, media_type="application/json")
    return Response(text + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(text))})
