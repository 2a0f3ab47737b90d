"""Make the starter adapter: `build` its rows from SQuAD 2.0's training articles, then `train` it.

    python scripts/train_starter.py build --squad ../shared/data/squad2-dev-half/dev-v2.0.json --out starter.jsonl
    python scripts/train_starter.py train --data starter.jsonl --model var/models/v0001 --out starter-run

`dress` mixes markdown-dressed copies of built rows with plain ones (evaluation/starter_dress.py: how the shipped
starter learnt to read passages with code spans, bullets and headings). `train` runs anywhere the retrain runs (CUDA in minutes, a 2-core CPU in hours); copy `OUT/adapter/*` into
model_store/starter_adapter/ to ship it. `fold` makes one adapter on v0001 of a chain of fine-tunes (the starter, then
a retrain's SFT and PPO adapters), so a loop run from the starter can be shipped as the starter. The logic lives in
evaluation/starter_data.py, training/starter.py and training/fold.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from settings.errors import run_guarded  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("build", "dress", "train", "fold"):
        print(
            "usage: scripts/train_starter.py {build,dress,train,fold} ... (--help after the command for its options)"
        )
        return 2
    if argv[0] == "dress":
        from evaluation.starter_dress import main as dress

        return dress(argv[1:])
    if argv[0] == "fold":
        from training.fold import main as fold

        return fold(argv[1:])
    if argv[0] == "build":
        from evaluation.starter_data import main as build

        return build(argv[1:])
    from training.starter import main as train

    return train(argv[1:])


if __name__ == "__main__":
    sys.exit(run_guarded(lambda: main(sys.argv[1:])))
