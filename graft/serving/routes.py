"""The server's routes: the native API and its page (``native``), and the Open Inference
Protocol v2 (``oip``). Handlers read the models, pools and flags from ``request.app.state.graft``
(a :class:`graft.serving.app.ServerState`), so one router serves every app made."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from graft._version import __version__
from graft.serving import v2
from graft.serving.errors import ServeError
from graft.serving.inputs import native_images, off_loop, read_body
from graft.serving.page import PAGE

if TYPE_CHECKING:
    from graft.serving.app import ServerState
    from graft.serving.models import ServedModel

__all__ = ["error_response", "native", "oip"]

native = APIRouter()
oip = APIRouter()


def error_response(status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error the server answers: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _state(request: Request) -> ServerState:
    return request.app.state.graft


# -- native API and the page ------------------------------------------------------------------
@native.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)


@native.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = _state(request)
    return {"models": [_model_info(state, name) for name in state.config.models]}


@native.get("/v1/models/{name}")
async def model_info(name: str, request: Request) -> dict[str, Any]:
    return _model_info(_state(request), name)


def _model_info(state: ServerState, name: str) -> dict[str, Any]:
    if name in state.models:
        return {**state.models[name].info, "ready": state.models[name].ready}
    if name in state.config.models:
        return {"name": name, "ready": False, "error": state.failed.get(name)}
    raise ServeError(404, f"Unknown model {name!r}. Served: {', '.join(state.config.models)}.",
                     "unknown_model")


async def _predict(state: ServerState, name: str, request: Request, top_k: int) -> Response:
    model = state.model(name)
    body = await read_body(request, state.config.max_body_bytes, state.decode_pool)
    images = await native_images(request, body, state.decode_pool)
    probabilities, timing = await state.run(model, images)
    # the response as it is (plain floats and strings): FastAPI's validation and encoding
    # of a returned dict would cost every request
    return JSONResponse({"model": name,
                         "predictions": model.predictor.postprocess(probabilities, top_k),
                         "timing_ms": timing.to_ms()})


@native.post("/v1/models/{name}/predict")
async def predict(name: str, request: Request,
                  top_k: int = Query(5, ge=1, le=1000)) -> Response:
    return await _predict(_state(request), name, request, top_k)


@native.post("/predict")
async def predict_only(request: Request, top_k: int = Query(5, ge=1, le=1000)) -> Response:
    state = _state(request)
    return await _predict(state, state.only_model(), request, top_k)


@native.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


# -- Open Inference Protocol v2 ---------------------------------------------------------------
@oip.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "graft", "version": __version__,
            "extensions": ["binary_tensor_data", "classification", "model_configuration"]}


@oip.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@oip.get("/v2/health/ready")
async def ready(request: Request) -> Response:
    state = _state(request)
    if state.ready:
        return JSONResponse({"ready": True})
    waiting = [n for n in state.config.models
               if not (n in state.models and state.models[n].ready)]
    reason = "shutting down" if state.draining else f"not ready: {', '.join(waiting)}"
    return error_response(503, f"Server {reason}.")


def _v2_model(state: ServerState, name: str, version: str | None) -> ServedModel:
    if version not in (None, "1"):
        raise ServeError(404, f"Model {name!r} has one version, '1' (asked: {version!r}).",
                         "unknown_model")
    return state.model(name)


@oip.get("/v2/models/{name}")
@oip.get("/v2/models/{name}/versions/{version}")
async def metadata(name: str, request: Request, version: str | None = None) -> dict[str, Any]:
    return v2.model_metadata(name, _v2_model(_state(request), name, version).labels)


@oip.get("/v2/models/{name}/ready")
@oip.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
    state = _state(request)
    _v2_model(state, name, version)
    if state.draining:  # in-flight requests are still answered; new ones should go elsewhere
        return error_response(503, f"Model {name!r} is not ready: the server is shutting down.")
    return JSONResponse({"name": name, "ready": True})


@oip.get("/v2/models/{name}/config")
@oip.get("/v2/models/{name}/versions/{version}/config")
async def model_config(name: str, request: Request,
                       version: str | None = None) -> dict[str, Any]:
    state = _state(request)
    model = _v2_model(state, name, version)
    return v2.model_config(name, model.labels, state.config.max_batch_size,
                           state.config.max_delay_ms)


@oip.post("/v2/models/{name}/infer")
@oip.post("/v2/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    state = _state(request)
    model = _v2_model(state, name, version)
    body = await read_body(request, state.config.max_body_bytes, state.decode_pool)
    parsed = await off_loop(state.decode_pool, len(body), v2.parse_infer, body,
                            request.headers.get(v2.HEADER_LENGTH), state.config.max_batch_size)
    probabilities, _ = await state.run(model, parsed.images)
    return v2.infer_response(name, parsed, probabilities, model.labels)
