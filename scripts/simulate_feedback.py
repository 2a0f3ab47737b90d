"""Simulated annotator (entry point): `python scripts/simulate_feedback.py --qa FILE [--k-candidates 4] ...`.

The logic and its options live in evaluation/simulate.py.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from evaluation.simulate import main

    sys.exit(main())
