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
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from graft._version import __version__
from graft.serving import routes
from graft.serving.config import ServeConfig
from graft.serving.errors import ServeError
from graft.serving.metrics import ServerMetrics
from graft.serving.models import ServedModel, Timing
from graft.serving.routes import error_response
from graft.system import plan_threads

__all__ = ["ServerState", "create_app"]

log = logging.getLogger("graft.serve")


class ServerState:
    """The models, the thread pools and the flags the routes read."""

    def __init__(self, config: ServeConfig, names: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.names = dict(names or {})  # how answers spell settings (graft serve: its flags)
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
            raise ServeError(504, f"No answer within timeout_s={self.config.timeout_s:g} s "
                                  f"(the server is overloaded).", "timeout",
                             parameter="timeout_s") from None


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


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServerState = app.state.graft
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
        for model in state.models.values():  # no batch runs any more: free the graphs' threads
            model.predictor.close()


async def _serve_error(request: Request, error: ServeError) -> JSONResponse:
    if error.reason not in ("queue_full", "timeout") and error.status < 500:
        request.app.state.graft.metrics.rejected.labels(reason=error.reason).inc()
    message = error.naming(request.app.state.graft.names)
    return error_response(error.status, message, error.headers)


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    return error_response(error.status_code, str(error.detail), getattr(error, "headers", None))


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
    return error_response(400, f"Bad request: {problems}.")


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("internal error on %s", request.url.path)
    return error_response(500, f"Internal server error ({type(error).__name__}).")


def create_app(config: ServeConfig, *, names: Mapping[str, str] | None = None) -> FastAPI:
    """The ASGI app serving ``config.models`` (run it with uvicorn; see :func:`serve`).

    ``names``: ``{field: name}`` for the settings an error answer names, in the words of whoever
    started the server (``graft serve`` gives its flags); by default the fields' own names.
    """
    config.validate()
    state = ServerState(config, names)
    app = FastAPI(title="graft", version=__version__, lifespan=_lifespan, docs_url="/docs",
                  redoc_url=None)
    app.state.graft = state
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(_CountRequests, metrics=state.metrics)
    app.include_router(routes.native)
    app.include_router(routes.oip)
    return app
