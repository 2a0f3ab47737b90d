"""Markdown-dressed copies of the starter's rows: SQuAD passages shown the way documentation reaches the model.

SQuAD's passages are Wikipedia prose. A user's documents are often markdown, and the prompt joins a passage's lines
into one, so the model sees "# Adding your documents Run `ragqa ingest PATH` to index a folder ..." or "- the
`--reload` flag in development mode will use `watchfiles`. - ...". The starter trained on prose alone abstained on
such passages although they held the answer (a command in a code span: "Which command switches back to an earlier
model version?" -> abstention over "`ragqa models rollback VERSION` switches back ...").

A dressed copy keeps the question, the passages' words and the target, and adds what markdown adds (each passage on
its own draw, so the markup is no clue to the answer):
  - inline code: 1 to 3 names or numbers of the passage in backticks (on 60% of passages); for half of the answered
    rows the gold answer too, and then the target keeps the backticks ("`Hamas` [1].");
  - a bulleted passage: each sentence as "- sentence" (30%);
  - a heading: "# Title" before the passage, from its source's name (40%).
Abstention rows are dressed the same way and keep the abstention: markup alone never means an answer.

    python scripts/train_starter.py dress --rows starter.jsonl --out dressed.jsonl --dressed 480 --plain 480

The output mixes `--dressed` dressed rows with `--plain` rows as built (rehearsal of the prose the starter learnt),
drawn without overlap from the input by `--seed`, shuffled. A dressed row's qid is its row's plus ":md", so it lands in
the same train/test split (training.starter.is_test_qid reads the part before the first colon).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from retrieval.prompt import NO_ANSWER

# One passage block of the user message retrieval.prompt renders: "[n] (source: name)\ntext", up to the next block
# or the question.
_BLOCK = re.compile(r"(\[(\d+)\] \(source: ([^)]*)\)\n)(.*?)(?=\n\n\[\d+\] \(source:|\n\nQuestion: )", re.S)
_SPAN = re.compile(r"\b(?:[A-Z][a-z]+(?: [A-Z][a-z]+)*|\d[\d,.]*\d|\d)\b")  # names and numbers
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_TARGET = re.compile(r"^(.*) \[(\d+)\]\.$")

CODE_SHARE = 0.6
GOLD_CODE_SHARE = 0.5
BULLET_SHARE = 0.3
HEADING_SHARE = 0.4


def title_of(source: str) -> str:
    """'yuan-dynasty-f2b8ccc1b269.txt' -> 'Yuan dynasty' (the build names passages by article and a hash)."""
    stem = re.sub(r"-[0-9a-f]{8,}\.txt$", "", source)
    title = stem.replace("-", " ").strip()
    return title[:1].upper() + title[1:]


def wrap_random(text: str, rng: random.Random, n: int, avoid: tuple[int, int] | None) -> str:
    """`n` names or numbers of `text` in backticks, none overlapping `avoid` (the gold answer's place)."""
    spans = [m.span() for m in _SPAN.finditer(text)]
    if avoid:
        spans = [s for s in spans if s[1] <= avoid[0] or s[0] >= avoid[1]]
    for a, b in sorted(rng.sample(spans, min(n, len(spans))), reverse=True):
        text = text[:a] + "`" + text[a:b] + "`" + text[b:]
    return text


def dress_row(row: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A dressed copy of one row (see the module's docstring); the row itself is not changed."""
    user = row["prompt"][-1]["content"]
    answer = row["completion"][0]["content"]
    target = _TARGET.match(answer)
    gold, cited = (target.group(1), int(target.group(2))) if target and answer != NO_ANSWER else (None, None)
    wrap_gold = gold is not None and rng.random() < GOLD_CODE_SHARE
    gold_wrapped = False

    def dress_passage(block: re.Match[str]) -> str:
        nonlocal gold_wrapped
        head, number, source, text = block.group(1), int(block.group(2)), block.group(3), block.group(4)
        avoid = None
        if number == cited and gold and gold in text:
            start = text.index(gold)
            avoid = (start, start + len(gold))
        text = wrap_random(text, rng, rng.randint(1, 3) if rng.random() < CODE_SHARE else 0, avoid)
        if avoid and wrap_gold:
            start = text.index(gold)
            text = text[:start] + "`" + gold + "`" + text[start + len(gold) :]
            gold_wrapped = True
        if rng.random() < BULLET_SHARE:
            text = " ".join("- " + s for s in _SENTENCE.split(text))
        if rng.random() < HEADING_SHARE:
            text = f"# {title_of(source)} {text}"
        return head + text

    dressed_user = _BLOCK.sub(dress_passage, user)
    completion = f"`{gold}` [{cited}]." if gold_wrapped else answer
    return {
        "prompt": [*row["prompt"][:-1], {"role": "user", "content": dressed_user}],
        "completion": [{"role": "assistant", "content": completion}],
        "meta": {**row["meta"], "qid": row["meta"]["qid"] + ":md", "dressed": True},
    }


def dress_mix(rows: list[dict[str, Any]], dressed: int, plain: int, seed: int) -> list[dict[str, Any]]:
    """`dressed` dressed copies and `plain` rows as they are, drawn without overlap, shuffled."""
    if dressed + plain > len(rows):
        raise ValueError(f"asked for {dressed + plain} rows, the input has {len(rows)}")
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), dressed + plain)
    mix = [dress_row(rows[i], rng) for i in picked[:dressed]] + [rows[i] for i in picked[dressed:]]
    rng.shuffle(mix)
    return mix


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train_starter.py dress", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=Path, required=True, help="rows from `scripts/train_starter.py build`")
    p.add_argument(
        "--out", type=Path, required=True, help="the JSONL to write (a .summary.json goes beside it)"
    )
    p.add_argument("--dressed", type=int, default=480, help="dressed copies in the output")
    p.add_argument("--plain", type=int, default=480, help="rows as built in the output")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from evaluation.starter_data import write_rows

    # Read here, not with training.starter.read_rows: evaluation/ does not import training/ (tests/test_architecture)
    rows = [json.loads(line) for line in args.rows.read_text(encoding="utf-8").splitlines() if line.strip()]
    mix = dress_mix(rows, args.dressed, args.plain, args.seed)
    write_rows(args.out, mix)
    built = args.rows.with_suffix(".summary.json")
    summary = json.loads(built.read_text(encoding="utf-8")) if built.is_file() else {}
    summary.update(
        rows=len(mix),
        dressed=args.dressed,
        plain=args.plain,
        dress_seed=args.seed,
        gold_in_code=sum(r["completion"][0]["content"].startswith("`") for r in mix),
        kinds=dict(Counter(r["meta"]["kind"] for r in mix)),
        dressed_from=str(args.rows),
    )
    args.out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "split"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
