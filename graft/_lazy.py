"""Names a package exports but imports only on first use (PEP 562), so importing the package
stays light: ``graft`` and ``graft.evaluation`` never load the training stack or matplotlib
until a name that needs them is used."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str],
                 before: Callable[[str], None] | None = None):
    """``__getattr__`` and ``__dir__`` for ``package``: ``where`` maps a name to its module.

    ``before(name)`` runs before a name's module is imported (e.g. to check an extra).
    """

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if before is not None:
            before(name)
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        module = sys.modules[package]
        return sorted(set(vars(module)) | set(getattr(module, "__all__", ())))

    return __getattr__, __dir__
