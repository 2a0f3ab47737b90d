"""Evaluate without the `ragqa` entry point: `python scripts/evaluate.py eval --qa FILE` (also eval-rm, compare).

The same subcommands as `ragqa` (app/cli.py), its offline defaults and its one error boundary.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from app.cli import main

    sys.exit(main())
