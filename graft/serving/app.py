"""The HTTP layer: routes over :class:`ServedModel`, errors as ``{"error": ...}``, metrics.

Models load in the background once the server listens: ``/v2/health/live`` answers at once,
``/v2/health/ready`` only after every model is loaded and has run one warm-up inference, and
no longer once shutdown has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from graft import __version__
from graft.serving import v2
from graft.serving.config import ServeConfig
from graft.serving.errors import ServeError
from graft.serving.inputs import native_images, off_loop, read_body
from graft.serving.metrics import ServerMetrics
from graft.serving.models import ServedModel, Timing
from graft.serving.page import PAGE
from graft.system import plan_threads

__all__ = ["ServerState", "create_app"]

log = logging.getLogger("graft.serve")


class ServerState:
    """The models, the thread pools and the flags the routes read."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.plan = plan_threads(config.threads)
        self.metrics = ServerMetrics()
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}
        self.draining = False
        self.decode_pool: ThreadPoolExecutor | None = None
        self.infer_pool: ThreadPoolExecutor | None = None

    @property
    def ready(self) -> bool:
        return (not self.draining and len(self.models) == len(self.config.models)
                and all(model.ready for model in self.models.values()))

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        for name, directory in self.config.models.items():
            try:
                model = await loop.run_in_executor(None, lambda n=name, d=directory: ServedModel(
                    n, d, self.config, decode_pool=self.decode_pool, infer_pool=self.infer_pool,
                    metrics=self.metrics))
                await model.start()
            except Exception as error:  # noqa: BLE001 - reported by /ready and every request
                log.error("model %s (%s) failed to load: %s", name, directory, error)
                self.failed[name] = str(error)
                continue
            self.models[name] = model
            log.info("model %s ready: %s", name, model.predictor)

    def model(self, name: str) -> ServedModel:
        if name in self.models and self.models[name].ready:
            return self.models[name]
        if name in self.failed:
            raise ServeError(503, f"Model {name!r} failed to load: {self.failed[name]}",
                             "not_ready")
        if name in self.config.models:
            raise ServeError(503, f"Model {name!r} is still loading. Retry shortly.",
                             "not_ready", headers={"Retry-After": "1"})
        raise ServeError(404, f"Unknown model {name!r}. Served: "
                              f"{', '.join(self.config.models)}.", "unknown_model")

    def only_model(self) -> str:
        if len(self.config.models) != 1:
            raise ServeError(404, f"Several models are served ({', '.join(self.config.models)}): "
                                  f"POST to /v1/models/NAME/predict.", "unknown_model")
        return next(iter(self.config.models))

    async def run(self, model: ServedModel, images: list[bytes]) -> tuple[Any, Timing]:
        try:
            return await asyncio.wait_for(model.predict(images), self.config.timeout_s)
        except asyncio.TimeoutError:
            self.metrics.rejected.labels(reason="timeout").inc(len(images))
            raise ServeError(504, f"No answer within --timeout-s {self.config.timeout_s:g} s "
                                  f"(the server is overloaded).", "timeout") from None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _CountRequests:
    """Requests by endpoint, method and status, and their latency: plain ASGI middleware
    (Starlette's ``BaseHTTPMiddleware`` adds a task and a body stream to every request)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = "500"  # unless the route answers: an unexpected error is answered outside

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD") else "other"
            self.metrics.requests.labels(endpoint, method, status).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def create_app(config: ServeConfig) -> FastAPI:
    """The ASGI app serving ``config.models`` (run it with uvicorn; see :func:`serve`)."""
    config.validate()
    state = ServerState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.decode_pool = ThreadPoolExecutor(state.plan.decode, thread_name_prefix="graft-decode")
        state.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="graft-infer")
        loading = asyncio.get_running_loop().create_task(state.load())
        try:
            yield
        finally:
            state.draining = True
            loading.cancel()
            for model in state.models.values():
                await model.stop()
            state.decode_pool.shutdown(wait=False, cancel_futures=True)
            state.infer_pool.shutdown(wait=True)

    app = FastAPI(title="graft", version=__version__, lifespan=lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.graft = state

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, error: ServeError) -> JSONResponse:
        if error.reason not in ("queue_full", "timeout") and error.status < 500:
            state.metrics.rejected.labels(reason=error.reason).inc()
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return _error(400, f"Bad request: {problems}.")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, error: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error(500, f"Internal server error ({type(error).__name__}).")

    app.add_middleware(_CountRequests, metrics=state.metrics)

    # -- native API and the page ----------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"models": [_model_info(name) for name in config.models]}

    @app.get("/v1/models/{name}")
    async def model_info(name: str) -> dict[str, Any]:
        return _model_info(name)

    def _model_info(name: str) -> dict[str, Any]:
        if name in state.models:
            return {**state.models[name].info, "ready": state.models[name].ready}
        if name in config.models:
            return {"name": name, "ready": False, "error": state.failed.get(name)}
        raise ServeError(404, f"Unknown model {name!r}. Served: {', '.join(config.models)}.",
                         "unknown_model")

    async def _predict(name: str, request: Request, top_k: int) -> Response:
        model = state.model(name)
        body = await read_body(request, config.max_body_bytes, state.decode_pool)
        images = await native_images(request, body, state.decode_pool)
        probabilities, timing = await state.run(model, images)
        # the response as it is (plain floats and strings): FastAPI's validation and encoding
        # of a returned dict would cost every request
        return JSONResponse({"model": name,
                             "predictions": model.predictor.postprocess(probabilities, top_k),
                             "timing_ms": timing.to_ms()})

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request,
                      top_k: int = Query(5, ge=1, le=1000)) -> Response:
        return await _predict(name, request, top_k)

    @app.post("/predict")
    async def predict_only(request: Request,
                           top_k: int = Query(5, ge=1, le=1000)) -> Response:
        return await _predict(state.only_model(), request, top_k)

    # -- Open Inference Protocol v2 -------------------------------------------------------
    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "graft", "version": __version__,
                "extensions": ["binary_tensor_data", "classification", "model_configuration"]}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"ready": True})
        waiting = [n for n in config.models if not (n in state.models and state.models[n].ready)]
        reason = "shutting down" if state.draining else f"not ready: {', '.join(waiting)}"
        return _error(503, f"Server {reason}.")

    def _v2_model(name: str, version: str | None) -> ServedModel:
        if version not in (None, "1"):
            raise ServeError(404, f"Model {name!r} has one version, '1' (asked: {version!r}).",
                             "unknown_model")
        return state.model(name)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return v2.model_metadata(name, _v2_model(name, version).labels)

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        _v2_model(name, version)
        if state.draining:  # in-flight requests are still answered; new ones should go elsewhere
            return _error(503, f"Model {name!r} is not ready: the server is shutting down.")
        return JSONResponse({"name": name, "ready": True})

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None) -> dict[str, Any]:
        model = _v2_model(name, version)
        return v2.model_config(name, model.labels, config.max_batch_size, config.max_delay_ms)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        model = _v2_model(name, version)
        body = await read_body(request, config.max_body_bytes, state.decode_pool)
        parsed = await off_loop(state.decode_pool, len(body), v2.parse_infer, body,
                                request.headers.get(v2.HEADER_LENGTH), config.max_batch_size)
        probabilities, _ = await state.run(model, parsed.images)
        return v2.infer_response(name, parsed, probabilities, model.labels)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
