import sys

from graft.cli.main import main

if __name__ == "__main__":  # not when a spawned decode process imports it as __mp_main__
    sys.exit(main())
