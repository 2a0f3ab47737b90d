"""Retrain without the `ragqa` entry point: `python scripts/retrain.py retrain [--config FILE] ...`."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """The same subcommands as `ragqa` (and its one error boundary), without the console script."""
    from app.cli import main as ragqa

    return ragqa(argv)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
