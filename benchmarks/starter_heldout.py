"""The starter (v0002) against the raw default model (v0001) on held-out questions, through the full ask path.

Held-out sets (never trained on by the starter): xquad-en minus every context squad2-dev-half also has, and the 4
held-out articles of squad2-dev-half (evaluation/splits.py, seed 0; answerable and unanswerable). Each model answers
a seeded subset with `ragqa eval` (retrieval over the set's own contexts, k=4, batched greedy, resumable: a rerun with
the same --out continues). The summary (docs/results/starter/heldout.json) holds per set and model n, F1 with its
bootstrap 95% CI, EM, contains-gold, abstention precision/recall, words, and starter - base F1 with a paired CI.

    python benchmarks/starter_heldout.py --home var --out benchmarks/results/starter   # a home after `ragqa setup`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average  # noqa: E402
from evaluation.metrics import bootstrap_mean_ci, paired_bootstrap_ci  # noqa: E402
from evaluation.splits import HELDOUT_ARTICLES, SPLIT_SEED, split_articles, subset_squad  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
SETS = {"xquad": 400, "squad2": 200}
MODELS = {"base": "v0001", "starter": "v0002"}
KEYS = (
    "f1_answerable",
    "em",
    "contains_gold_rate",
    "abstention_rate",
    "abstention_precision",
    "abstention_recall",
    "mean_answer_words",
    "relevance_gated_rate",
)


def write_sets(data: Path, out: Path) -> dict[str, Path]:
    squad = json.loads((data / "squad2-dev-half" / "dev-v2.0.json").read_text(encoding="utf-8"))
    xquad = json.loads((data / "xquad-en" / "xquad.en.json").read_text(encoding="utf-8"))
    _, heldout = split_articles(squad, HELDOUT_ARTICLES, SPLIT_SEED)
    seen = {" ".join(p["context"].split()) for a in squad["data"] for p in a["paragraphs"]}
    xq = []
    for article in xquad["data"]:
        paragraphs = [p for p in article["paragraphs"] if " ".join(p["context"].split()) not in seen]
        if paragraphs:
            xq.append({**article, "paragraphs": paragraphs})
    paths = {"xquad": out / "xquad_heldout.json", "squad2": out / "squad2_heldout.json"}
    paths["xquad"].write_text(json.dumps({"version": "1.1", "data": xq}), encoding="utf-8")
    paths["squad2"].write_text(json.dumps(subset_squad(squad, heldout)), encoding="utf-8")
    return paths


def run_eval(
    qa: Path,
    version: str,
    limit: int,
    out: Path,
    batch_size: int,
    env: dict[str, str],
    k: int | None = None,
    max_prompt_tokens: str | None = None,
) -> float:
    t0 = time.time()
    cmd = [
        sys.executable,
        "-c",
        "from app.cli import main; raise SystemExit(main())",
        "eval",
        "--qa",
        str(qa),
        "--model",
        version,
        "--limit",
        str(limit),
    ]
    cmd += ["--seed", "0", "--batch-size", str(batch_size), "--no-progress", "--out", str(out)]
    if k is not None:
        cmd += ["-k", str(k)]
    if max_prompt_tokens is not None:
        cmd += ["--max-prompt-tokens", max_prompt_tokens]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.time() - t0


def read_examples(folder: Path) -> dict[str, dict[str, Any]]:
    """The scored rows of a `ragqa eval` folder (examples.jsonl) that did not error, by question id."""
    lines = (folder / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines) if r.get("error") is None}


def per_question_f1(folder: Path) -> dict[str, float]:
    return {qid: float(r["f1"]) for qid, r in read_examples(folder).items()}


def summarise_runs(runs: dict[str, str], sets: list[str], reference: str) -> dict[str, Any]:
    """Per set and model (`runs`: name -> eval folder, `{set}` standing for the set's name): n, F1 with its
    bootstrap CI and the KEYS metrics; and each other model minus `reference`, paired over shared questions."""
    out: dict[str, Any] = {"heldout": {}, "deltas": {}}
    for name in sets:
        out["heldout"][name], out["deltas"][name] = {}, {}
        f1s = {}
        for model, pattern in runs.items():
            folder = Path(pattern.format(set=name))
            answers = json.loads((folder / "report.json").read_text(encoding="utf-8"))["metrics"]["answers"]
            f1s[model] = per_question_f1(folder)
            out["heldout"][name][model] = {
                "n": len(f1s[model]),
                "f1": answers["f1"],
                "f1_ci": bootstrap_mean_ci(list(f1s[model].values()))["ci"],
                **{k: answers.get(k) for k in KEYS},
            }
        for model in runs:
            if model == reference:
                continue
            ids = sorted(set(f1s[model]) & set(f1s[reference]))
            diff = paired_bootstrap_ci([f1s[model][i] for i in ids], [f1s[reference][i] for i in ids])
            out["deltas"][name][f"{model}_minus_{reference}"] = {
                "n": len(ids),
                "f1": diff["diff"],
                "ci": diff["ci"],
            }
    return out


def summarise(out: Path) -> dict[str, Any]:
    runs = {model: str(out / f"{{set}}-{version}") for model, version in MODELS.items()}
    return summarise_runs(runs, list(SETS), "base")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--home", type=Path, required=True, help="a RAGQA_HOME where `ragqa setup` published v0002"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sets", type=Path, default=None, help="where the held-out set files go (default: --out)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "RAGQA_HOME": str(args.home.resolve()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    sets_dir = args.sets or args.out
    sets_dir.mkdir(parents=True, exist_ok=True)
    sets = write_sets(args.data, sets_dir)  # an eval resumes only with the same file path
    wall = {}
    for version in MODELS.values():
        for name, limit in SETS.items():
            wall[f"{name}-{version}"] = run_eval(
                sets[name], version, limit, args.out / f"{name}-{version}", args.batch_size, env
            )
    summary = summarise(args.out)
    summary["wall_s_this_invocation"] = wall
    summary["machine"] = {"cpu": cpu(), "load_average": load_average()}
    (args.out / "heldout.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    for name, models in summary["heldout"].items():
        for model, m in models.items():
            print(
                f"{name:7s} {model:8s} n={m['n']:4d} F1 {m['f1']:.3f} [{m['f1_ci'][0]:.3f}, {m['f1_ci'][1]:.3f}] "
                f"EM {m['em']:.3f} abstain {m['abstention_rate']:.2f} words {m['mean_answer_words']:.1f}"
            )
        d = summary["deltas"][name]["starter_minus_base"]
        print(f"{name:7s} starter - base F1 {d['f1']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
