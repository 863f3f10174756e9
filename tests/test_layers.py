"""No import runs up a layer: each part of graft imports only the parts below it (or modules of its
own package), function-level imports included, so the runtime stays lean and nothing cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GRAFT = Path(__file__).resolve().parents[1] / "graft"

# Lowest first. A top-level module not named here is a new layer nobody placed yet: the test says so.
LAYERS: list[tuple[str, ...]] = [
    ("graft.errors", "graft.catalog", "graft.config", "graft.extras", "graft._lazy",
     "graft.system", "graft.page", "graft._version"),
    ("graft.data",),
    ("graft.bundle",),
    ("graft.inference",),
    ("graft.backbones",),
    ("graft.features",),
    ("graft.heads",),
    ("graft.evaluation",),
    ("graft.finetune",),
    ("graft.workflows",),
    ("graft.estimator", "graft.serving"),
    ("graft.cli", "graft", "graft.__main__", "graft._entry"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(GRAFT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer entry ``module`` belongs to: ``graft`` itself, or ``graft.<first part>``."""
    parts = module.split(".")
    return module if len(parts) == 1 else ".".join(parts[:2])


def layer_of(module: str) -> int:
    unit = unit_of(module)
    for rank, units in enumerate(LAYERS):
        if unit in units:
            return rank
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS in tests/test_layers.py.")


def is_module(name: str) -> bool:
    path = GRAFT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(source: str, module: str, package: str) -> list[tuple[str, int]]:
    """Every graft module ``source`` (the text of ``module``, in ``package``) imports, and its
    line, at any depth, relative imports resolved: ``from graft.x import y`` imports
    ``graft.x.y`` where that is a module, else ``graft.x``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=module)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base,
                       node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name.split(".")[0] == "graft"]


def imports_of(path: Path) -> list[tuple[str, int]]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), module, package)


MODULES = sorted(GRAFT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_up_a_layer(path):
    importer = module_name(path)
    own = layer_of(importer)
    upward = []
    for imported, line in imports_of(path):
        if unit_of(imported) == unit_of(importer):
            continue  # modules of one package may import each other
        rank = layer_of(imported)
        if rank > own:
            upward.append(f"{importer} (layer {own}: {unit_of(importer)}) imports {imported} "
                          f"(layer {rank}: {unit_of(imported)}) at line {line}")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_every_module_is_checked():
    assert len(MODULES) > 50
    for path in MODULES:
        layer_of(module_name(path))


def test_imports_inside_functions_and_relative_ones_are_seen():
    source = (
        "import os\n"
        "import graft.inference.engine\n"
        "def f():\n"
        "    from . import store\n"
        "    from ..data import images, SPLITS\n"
        "    from graft import __version__\n"
    )
    assert imports_in(source, "graft.features.extract", "graft.features") == [
        ("graft.inference.engine", 2), ("graft.features.store", 4), ("graft.data.images", 5),
        ("graft.data", 5), ("graft", 6)]
