"""``graft serve``: models over HTTP (native JSON API, Open Inference Protocol v2, metrics, a
web page), on the one inference pipeline. Needs the ``[serve]`` extra."""

from __future__ import annotations

from typing import TYPE_CHECKING

from graft._lazy import lazy_exports
from graft.serving.config import ServeConfig, parse_models

if TYPE_CHECKING:
    from graft.serving.app import create_app
    from graft.serving.server import serve

__all__ = ["ServeConfig", "create_app", "parse_models", "serve"]

# The web stack (FastAPI, uvicorn, prometheus-client) is imported only when a server is made.
__getattr__, __dir__ = lazy_exports(__name__, {"create_app": "graft.serving.app",
                                               "serve": "graft.serving.server"})
