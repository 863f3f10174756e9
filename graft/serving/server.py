"""Run the app under uvicorn: settings logged at start, graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import uvicorn

from graft.serving.app import create_app
from graft.serving.config import ServeConfig

__all__ = ["serve"]


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens and turning not-ready as soon as a stop begins
    (it then stops accepting, lets in-flight requests finish, and exits)."""

    announce: Callable[[str], None] = print

    def handle_exit(self, sig: int, frame: object) -> None:
        self.config.app.state.graft.draining = True
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                self.announce(f"graft serve: listening on http://{shown}:{port} "
                              f"(web page at /, metrics at /metrics)")


def serve(config: ServeConfig, *, log: Callable[[str], None] = print,
          names: Mapping[str, str] | None = None) -> None:
    """Serve ``config.models`` until SIGTERM or Ctrl-C (``names``: see :func:`create_app`)."""
    app = create_app(config, names=names)
    state = app.state.graft
    names = ", ".join(f"{name}={path}" for name, path in config.models.items())
    plan = state.plan
    log(f"graft serve: models {names}; {plan.cpus} CPU(s): {plan.decode} decoding thread(s) "
        f"beside one inference thread running {plan.onnx} image(s) at a time through ONNX "
        f"Runtime, one thread each; batches up to "
        f"{config.max_batch_size} images, waiting at most {config.max_delay_ms:g} ms; queue "
        f"{config.max_queue} images per model; timeout {config.timeout_s:g} s; body up to "
        f"{config.max_body_mb:g} MB; images up to {config.max_pixels:,} pixels")
    logging.getLogger("graft.serve").setLevel(logging.INFO)
    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=max(1, int(config.timeout_s)), lifespan="on"))
    server.announce = log
    server.run()
