"""The ``graft`` console script: Ctrl-C at any moment, even while modules load, exits cleanly."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from graft.cli.main import main
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
