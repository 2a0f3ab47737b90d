"""Retrain without the `ragqa` entry point: `python scripts/retrain.py retrain [--config FILE] ...`."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from settings.paths import make_private
    from training.commands import add_commands

    parser = argparse.ArgumentParser(prog="retrain.py", description="rlhf-rag-qa training pipeline")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    make_private()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
