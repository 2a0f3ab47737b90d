"""How well can a model tell unanswerable questions apart? The abstention ceiling of any threshold rule.

Issue #13 asks for abstention recall >= 0.5 at precision >= 0.7 on the squad2 held-out unanswerables. Greedy
decoding gives one point (precision, recall); a threshold on the model's own preference for the abstention
sentence would give others. This script measures the whole curve, to say whether any threshold could reach the
line, without choosing one: it reads the answers of an earlier `ragqa eval` run (its journal stores each
question with the passages the model saw) and scores, with the same model, for every question:

- `logp_abstain`: log P(NO_ANSWER + end of turn | the app's prompt), teacher-forced;
- `margin`: logp_abstain - log P(the model's own greedy answer + end of turn) (0 where greedy abstained): the
  analogue of BERT's SQuAD 2.0 null-score difference.

Per score: ROC AUC for unanswerable vs answerable, the precision/recall of "abstain when score >= t" at every
threshold t, and the most recall any threshold reaches at precision >= 0.7 (picked with hindsight on the very
questions it is measured on: an upper bound for a threshold rule, not a tuned result). Beside them the greedy
point and the abstention rate on answerable and on unanswerable questions.

Held-out sets are read here only to measure; no threshold from this script goes into the app.

    .venv/bin/python benchmarks/abstention_curve.py \
        --run starter=/work/heldout20/squad2-dressed16:var/models/v0003 \
        --run loop=DIR:v0001_DIR+ADAPTER_DIR --out docs/results/loop/abstention_curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LINE_PRECISION = 0.7
LINE_RECALL = 0.5


def read_answers(folder: Path) -> list[dict[str, Any]]:
    """(question, passages, answer, unanswerable, abstained) of each question of an eval run's journal."""
    examples = {}
    for line in (folder / "examples.jsonl").read_text().splitlines():
        ex = json.loads(line)
        examples[ex["question"]] = ex
    rows = []
    for line in (folder / "answers.jsonl").read_text().splitlines():
        entry = json.loads(line)
        record = entry.get("record")
        if record is None or record.get("error"):
            continue
        ex = examples[record["question"]]
        if ex.get("relevance_gated"):  # answered by the relevance gate, not by the model: nothing to score
            continue
        rows.append(
            {
                "question": record["question"],
                "passages": record["passages"],
                "answer": record["answer"],
                "unanswerable": bool(ex["unanswerable"]),
                "abstained": bool(ex["abstained"]),
            }
        )
    return rows


def load_model(spec: str) -> tuple[Any, Any]:
    """A merged model folder, or BASE+ADAPTER (a PEFT adapter on a base folder, merged in memory)."""
    import torch

    from model_store.loading import load_causal_lm, load_tokenizer

    base, _, adapter = spec.partition("+")
    tok = load_tokenizer(Path(base))
    model = load_causal_lm(Path(base), dtype=torch.bfloat16)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return tok, model.eval()


def completion_logp(model: Any, tok: Any, prompt_ids: list[int], text: str) -> float:
    """log P(text + the chat template's end of turn | prompt), summed over its tokens."""
    import torch

    from training.ppo.losses import logprobs_from_logits

    completion = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt_ids + completion])
    with torch.inference_mode():
        logits = model(ids).logits[:, len(prompt_ids) - 1 : -1]
    return float(logprobs_from_logits(logits, torch.tensor([completion])).sum())


def score_rows(rows: list[dict[str, Any]], spec: str) -> None:
    from retrieval.prompt import NO_ANSWER, render_prompt

    tok, model = load_model(spec)
    for i, row in enumerate(rows):
        messages = render_prompt(row["question"], row["passages"])
        prompt_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
        row["logp_abstain"] = completion_logp(model, tok, prompt_ids, NO_ANSWER)
        answer = row["answer"].strip()
        own = (
            row["logp_abstain"]
            if row["abstained"] or not answer
            else completion_logp(model, tok, prompt_ids, answer)
        )
        row["margin"] = row["logp_abstain"] - own
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{len(rows)}", flush=True)


def roc_auc(scores: list[float], positive: list[bool]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def curve(scores: list[float], positive: list[bool]) -> list[dict[str, float]]:
    """Precision and recall of "abstain when score >= t" for every distinct score t (high to low)."""
    total = sum(positive)
    points = []
    for t in sorted(set(scores), reverse=True):
        chosen = [p for s, p in zip(scores, positive, strict=True) if s >= t]
        hits = sum(chosen)
        points.append(
            {"threshold": t, "abstains": len(chosen), "precision": hits / len(chosen), "recall": hits / total}
        )
    return points


def best_recall_at(points: list[dict[str, float]], precision: float) -> dict[str, float] | None:
    eligible = [p for p in points if p["precision"] >= precision]
    return max(eligible, key=lambda p: (p["recall"], p["precision"])) if eligible else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from evaluation.metrics import abstention_scores
    from evaluation.runner import nan_to_none

    positive = [r["unanswerable"] for r in rows]
    answerable = [r for r in rows if not r["unanswerable"]]
    unanswerable = [r for r in rows if r["unanswerable"]]
    greedy = abstention_scores([r["abstained"] for r in rows], positive)
    out: dict[str, Any] = {
        "n": len(rows),
        "unanswerable": len(unanswerable),
        "greedy": {
            "precision": nan_to_none(greedy["abstention_precision"]),
            "recall": nan_to_none(greedy["abstention_recall"]),
            "abstained_of_unanswerable": sum(r["abstained"] for r in unanswerable) / len(unanswerable),
            "abstained_of_answerable": sum(r["abstained"] for r in answerable) / len(answerable),
        },
        "base_rate": len(unanswerable) / len(rows),
    }
    for name in ("logp_abstain", "margin"):
        scores = [r[name] for r in rows]
        points = curve(scores, positive)
        best = best_recall_at(points, LINE_PRECISION)
        out[name] = {
            "roc_auc": round(roc_auc(scores, positive), 4),
            "best_recall_at_precision_0_7": best,
            "line_reachable": bool(best and best["recall"] >= LINE_RECALL),
            "curve": [{k: round(v, 4) for k, v in p.items()} for p in points],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], help="NAME=EVAL_DIR:MODEL[+ADAPTER]")
    parser.add_argument("--out", type=Path, required=True, help="JSON; its curves are drawn beside it (.png)")
    args = parser.parse_args(argv)
    if not args.run and not args.out.is_file():
        parser.error("nothing to do: give --run, or an existing --out to draw again")

    from benchmarks.machine import cpu, load_average

    # An existing --out keeps its other runs: runs are added (or replaced by name) one invocation at a time.
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    report.update(
        {
            "what": __doc__.split("\n\n")[0],
            "line": {"precision": LINE_PRECISION, "recall": LINE_RECALL},
        }
    )
    for spec in args.run:
        name, _, rest = spec.partition("=")
        folder, _, model = rest.partition(":")
        rows = read_answers(Path(folder))
        print(f"{name}: {len(rows)} answers from {folder}, model {model}", flush=True)
        t0, load_start = time.perf_counter(), load_average()
        score_rows(rows, model)
        summary = summarise(rows)
        summary.update(
            {
                "eval_dir": folder,
                "model": model,
                "seconds": round(time.perf_counter() - t0, 1),
                "machine": {**cpu(), "load_average_start": load_start, "load_average_end": load_average()},
            }
        )
        summary["rows"] = [
            {k: r[k] for k in ("question", "unanswerable", "abstained", "logp_abstain", "margin")}
            for r in rows
        ]
        report["runs"][name] = summary
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out.with_suffix(".png"))
    print_table(report)
    return 0


def plot(report: dict[str, Any], path: Path) -> None:
    """Precision against recall of the threshold on logp_abstain per run, each greedy point, and the line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (name, run) in enumerate(report["runs"].items()):
        color = f"C{i}"
        points = run["logp_abstain"]["curve"]
        label = f"{name} (AUC {run['logp_abstain']['roc_auc']:.2f})"
        ax.plot([p["recall"] for p in points], [p["precision"] for p in points], color=color, label=label)
        greedy = run["greedy"]
        if greedy["precision"] is not None:
            ax.plot(greedy["recall"], greedy["precision"], "o", color=color, markersize=7)
        ax.axhline(run["base_rate"], color=color, linestyle=":", linewidth=0.8)
    line = report["line"]
    ax.fill_between(
        [line["recall"], 1], line["precision"], 1, color="green", alpha=0.12, label="issue #13's line"
    )
    ax.set_xlabel("abstention recall (unanswerable questions abstained)")
    ax.set_ylabel("abstention precision")
    ax.set_title("Abstain when log P(abstention sentence) >= t; dots: greedy; dotted: chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0.3, 1.02)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"{'run':<14} {'n':>4} {'unans':>5} {'greedy P/R':>11} {'abst|ans':>8} {'abst|unans':>10} "
        f"{'AUC logp':>8} {'AUC margin':>10} {'best R@P>=.7 (logp / margin)':>30}"
    )
    for name, s in report["runs"].items():
        g = s["greedy"]
        best = [
            (s[k]["best_recall_at_precision_0_7"] or {}).get("recall") for k in ("logp_abstain", "margin")
        ]
        print(
            f"{name:<14} {s['n']:>4} {s['unanswerable']:>5} {g['precision']:.2f}/{g['recall']:.2f}"
            f"{g['abstained_of_answerable']:>9.2f} {g['abstained_of_unanswerable']:>10.2f} "
            f"{s['logp_abstain']['roc_auc']:>8.3f} {s['margin']['roc_auc']:>10.3f} "
            f"{best[0] if best[0] is None else round(best[0], 3)!s:>14} / {best[1] if best[1] is None else round(best[1], 3)!s}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
