"""How much does SFT on N loop-style demonstrations teach the raw v0001? A probe for the loop experiment's size.

The loop (benchmarks/loop.py) starts from the raw model and learns from what the simulated users wrote: its SFT
stage sees only the corrections (~0.3 x the simulated questions). The starter reached held-out F1 0.42 (xquad)
with 5,369 rows; the loop's 57-105 demonstrations moved nothing. This probe trains the retrain's own SFT stage
(default.yaml's settings: 2 epochs, 8 rows a step, lr 2e-4, LoRA r 16) from v0001 on N rows shaped like the
loop's demonstrations (the app's prompt with k=2 retrieved passages; target "<gold> [n]." or the abstention
sentence: `scripts/train_starter.py build --k 2 --views 1`), and scores the adapter on the questions of the
training articles that the starter split holds back (natural SQuAD 2.0 mix, greedy, the app's transformers
backend). Training articles of squad2-dev-half only: no held-out set is read.

    python scripts/train_starter.py build --squad ../shared/data/squad2-dev-half/dev-v2.0.json \
        --out /tmp/probe/rows.jsonl --k 2 --views 1 --unanswerable-per-answer 0.25
    python benchmarks/sft_data_size.py --rows /tmp/probe/rows.all.jsonl --n 400 --work /tmp/probe/n400

Writes WORK/result.json (and, with --out, a copy there) with the machine, the load and the timings.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The retrain's default SFT settings (training/configs/default.yaml), over the starter's recipe that
# `train_starter.py train` starts from: the probe asks what the LOOP's SFT learns from N rows.
LOOP_SFT = (
    "sft.lr=2e-4",
    "sft.batch_size=2",
    "sft.grad_accum=4",
    "sft.max_length=1024",
    "sft.save_steps=1000",
    "data.test_fraction=0.02",
)
TEST_FRACTION = 0.05  # the starter split's held-back share of questions (training/starter.STARTER_SETTINGS)


def pick_rows(
    rows: list[dict[str, Any]], n: int, dev_n: int, seed: int, abstain_share: float | None = None
) -> tuple[list[dict], list[dict]]:
    """(n training rows, dev_n validation rows): first showings, split by question as the starter splits them.
    `abstain_share`: that share of the n rows has the abstention sentence as its target (unanswerable, off-topic
    and retrieval-miss rows), the rest answers; None keeps the mix the build made."""
    from benchmarks.starter_sweep import dev_rows
    from evaluation.starter_data import balance
    from training.starter import is_test_qid

    dev = dev_rows(rows, TEST_FRACTION)
    random.Random(seed).shuffle(dev)
    train = [
        r for r in rows if r["meta"].get("view", 0) == 0 and not is_test_qid(r["meta"]["qid"], TEST_FRACTION)
    ]
    train = balance(train, seed, 0.25)
    random.Random(seed + 1).shuffle(train)
    if abstain_share is not None:
        if not 0 <= abstain_share <= 1:
            raise SystemExit(f"--abstain-share {abstain_share}: a share between 0 and 1")
        abstain = [r for r in train if r["meta"]["kind"] != "answer"]
        answer = [r for r in train if r["meta"]["kind"] == "answer"]
        k = round(abstain_share * n)
        if k > len(abstain) or n - k > len(answer):
            raise SystemExit(
                f"--abstain-share {abstain_share}: needs {k} abstention and {n - k} answer rows, the build has "
                f"{len(abstain)} and {len(answer)}"
            )
        train = abstain[:k] + answer[: n - k]
        random.Random(seed + 2).shuffle(train)
    return train[:n], dev[:dev_n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows", type=Path, required=True, help="the .all.jsonl of `train_starter.py build --k 2`"
    )
    p.add_argument("--n", type=int, required=True, help="training rows")
    p.add_argument("--dev", type=int, default=160, help="held-back questions scored")
    p.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "v0001")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, help="also copy the result JSON here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--abstain-share",
        type=float,
        help="share of training rows whose target is the abstention sentence (default: the build's mix)",
    )
    args = p.parse_args(argv)

    from benchmarks.machine import cpu, load_average
    from benchmarks.starter_sweep import generate_answers, read_jsonl, score_answers
    from evaluation.starter_data import write_rows

    train, dev = pick_rows(read_jsonl(args.rows), args.n, args.dev, args.seed, args.abstain_share)
    args.work.mkdir(parents=True, exist_ok=True)
    write_rows(args.work / "train.jsonl", train)
    result: dict[str, Any] = {
        "machine": cpu(),
        "load_average_start": load_average(),
        "settings": {
            "n": len(train),
            "dev": len(dev),
            "sft": list(LOOP_SFT),
            "k": 2,
            "seed": args.seed,
            "abstain_share": args.abstain_share,
        },
        "train_kinds": dict(Counter(r["meta"]["kind"] for r in train)),
        "dev_kinds": dict(Counter(r["meta"]["kind"] for r in dev)),
    }
    started = time.monotonic()
    command = [sys.executable, str(ROOT / "scripts" / "train_starter.py"), "train", "--data"]
    command += [str(args.work / "train.jsonl"), "--model", str(args.model), "--out", str(args.work / "run")]
    for setting in LOOP_SFT:
        command += ["--set", setting]
    subprocess.run(command, check=True, cwd=ROOT)
    result["train_s"] = round(time.monotonic() - started)
    started = time.monotonic()
    answers = generate_answers(args.model, args.work / "run" / "adapter", dev, 8)
    result["eval_s"] = round(time.monotonic() - started)
    result["dev"] = score_answers(dev, answers)
    result["load_average_end"] = load_average()
    text = json.dumps(result, indent=1) + "\n"
    (args.work / "result.json").write_text(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    dev_scores = result["dev"]
    print("| rows | dev F1 | answerable F1 | answerable abstained | abstention P / R | train s |")
    print(
        f"| {len(train)} | {dev_scores['f1']:.3f} | {dev_scores['f1_answerable']:.3f} | "
        f"{dev_scores['answerable_abstained']:.2f} | {dev_scores['abstention_precision']} / "
        f"{dev_scores['abstention_recall']} | {result['train_s']} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
