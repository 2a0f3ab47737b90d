"""Compare models already evaluated on the same held-out questions (`ragqa eval` folders), against a reference.

Per set and model: n, F1 with its bootstrap 95% CI, EM, answerable F1, contains-gold, abstention precision/recall,
words, the share gated by the relevance gate; and model - reference F1 paired over the questions both answered.
Nothing is run here: it reads each folder's report.json and examples.jsonl (see benchmarks/starter_heldout.py for
how the sets and the folders are made).

    python benchmarks/heldout_compare.py --reference starter \\
        --run starter=OUT/{set}-v0002 --run half=OUT/{set}-half --sets xquad,squad2 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average  # noqa: E402
from benchmarks.starter_heldout import summarise_runs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--run", action="append", required=True, help="NAME=FOLDER, {set} standing for the set name"
    )
    p.add_argument("--reference", required=True, help="the NAME the others are compared with")
    p.add_argument("--sets", default="xquad,squad2")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--note", default="", help="what the models are, for the record")
    args = p.parse_args(argv)
    runs = dict(spec.split("=", 1) for spec in args.run)
    if args.reference not in runs:
        raise SystemExit(f"--reference {args.reference} is not one of the runs {sorted(runs)}")
    summary = {"runs": runs, **summarise_runs(runs, args.sets.split(","), args.reference)}
    summary["note"] = args.note
    summary["machine"] = {"cpu": cpu(), "load_average": load_average()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, models in summary["heldout"].items():
        for model, m in models.items():
            delta = summary["deltas"][name].get(f"{model}_minus_{args.reference}")
            d = f"  {delta['f1']:+.3f} [{delta['ci'][0]:+.3f}, {delta['ci'][1]:+.3f}]" if delta else ""
            print(
                f"{name:7s} {model:12s} n={m['n']:4d} F1 {m['f1']:.3f} answerable {m['f1_answerable']:.3f} "
                f"abst P/R {m['abstention_precision'] or 0:.2f}/{m['abstention_recall'] or 0:.2f} "
                f"words {m['mean_answer_words']:.1f}{d}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
