"""Command-line interface (thin layer over graft.workflows)."""

from graft.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
