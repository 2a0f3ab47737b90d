"""Feedback simulation speed: seconds per question for 4 candidates, batched against one after another.

The feedback simulator (evaluation/simulate.py) is what fills the store for the loop experiment, so its speed
sets how much feedback an experiment can afford. Rows, each on a fresh feedback store over the same home, the
same index and the same questions (squad2-dev-half training articles, the loop's split; a seeded sample):
  batched     `--batch-size 8`: 8 questions sampled in one transformers generate (the simulator's default where
              llama.cpp cannot serve)
  llamacpp    one question at a time on the llama.cpp backend, its k candidates as parallel sequences over the
              one prompt (the app's Alternatives path; the simulator's default where llama.cpp serves)
  sequential  one question at a time on transformers with the 4 candidates sampled one after another
              (QAService.candidates patched to draw n=1 four times): how the simulator sampled before batching
The answer cap and the passages shown are the loop experiment's (48 new tokens, k=2). The index is built once
before the rows; every row's wall time includes loading the embedder and the model (a few seconds: a user pays
them too). "Same stored records": per question, the passages shown, the
number of candidates, rankings and corrections are compared between rows (only the sampled texts may differ; the
shorter rows correct the questions the batched row corrects).

Prints a table and writes docs/results/simulate/<name>.json with the CPU model, flags and load before each row.
No assertions: timings on shared cores are noisy.

    .venv/bin/python benchmarks/simulate_speed.py                       # ~20 minutes on a 2-core AVX2 CPU
    .venv/bin/python benchmarks/simulate_speed.py --questions 16 --sequential-questions 4 --llamacpp-questions 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average, wait_for_idle  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"  # benchmarks may read ../shared
OUT_DIR = ROOT / "docs" / "results" / "simulate"
ROWS = ("batched", "llamacpp", "sequential")
HOME_CONFIG = (
    "max_new_tokens: 48\nk: 2\ndemo_corpus: false\n"  # the loop experiment's answer cap and passages
)


def question_file(squad: Path, n: int, seed: int, out: Path) -> Path:
    """A SQuAD file of `n` seeded questions of the loop's training articles (answerable and not), in file order."""
    import random

    from evaluation.splits import split_articles, subset_squad

    data = json.loads(squad.read_text())
    train_titles, _heldout = split_articles(data, 4, seed)  # the loop's split (4 held-out articles)
    train = subset_squad(data, train_titles)
    keep = set(random.Random(seed).sample(question_ids(train), n))
    return write_subset(train, keep, out)


def question_ids(squad: dict[str, Any]) -> list[str]:
    """Every question id of a SQuAD file, in file order."""
    return [q["id"] for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]


def write_subset(squad: dict[str, Any], keep: set[str], out: Path) -> Path:
    """`squad` restricted to the question ids in `keep` (paragraphs and articles left empty are dropped)."""
    data = []
    for article in squad["data"]:
        paragraphs = [
            {**p, "qas": [q for q in p["qas"] if q["id"] in keep]}
            for p in article["paragraphs"]
            if any(q["id"] in keep for q in p["qas"])
        ]
        if paragraphs:
            data.append({**article, "paragraphs": paragraphs})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"version": "v2.0", "data": data}))
    return out


def first_questions(path: Path, n: int, out: Path) -> Path:
    """The first `n` questions of a SQuAD file (file order), as a file of their own."""
    squad = json.loads(path.read_text())
    return write_subset(squad, set(question_ids(squad)[:n]), out)


def prepare_home(home: Path) -> None:
    """A RAGQA_HOME with the raw v0001 (`ragqa setup --no-demo --no-starter`, once) and the loop's config."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(HOME_CONFIG)
    if not (home / "models" / "current").exists():
        env = {**os.environ, "RAGQA_HOME": str(home), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "app.cli", "setup", "--no-demo", "--no-starter"]
        subprocess.run(command, env=env, check=True)


def build_index(qa_file: Path, index: Path) -> None:
    """Index the contexts of every question of `qa_file` into `index`, as the simulator would on its first run."""
    from app.config import AppConfig
    from evaluation.formats import load_qa
    from evaluation.simulate import ensure_indexed
    from retrieval.embedder import SentenceTransformerEmbedder

    config = AppConfig.load()
    dataset = load_qa(qa_file)
    ensure_indexed(dataset, dataset.examples, index, config, SentenceTransformerEmbedder(config.embedder))


@contextmanager
def candidates_one_after_another() -> Iterator[None]:
    """QAService.candidates drawing its n candidates as n single samples (seeds seed, seed+1, ...)."""
    from app.qa import QAService

    original = QAService.candidates

    def one_by_one(
        self: Any, question: str, passages: Any, history: Any = (), n: Any = None, seed: Any = None
    ):
        n = n or self.config.num_candidates
        base = 0 if seed is None else seed
        return [c for j in range(n) for c in original(self, question, passages, history, n=1, seed=base + j)]

    QAService.candidates = one_by_one  # type: ignore[method-assign]
    try:
        yield
    finally:
        QAService.candidates = original  # type: ignore[method-assign]


@contextmanager
def corrections_of_the_full_run(total: int) -> Iterator[None]:
    """The simulator picks a seeded share of a run's questions to correct, so a run over the first N questions
    of the file would correct others than the full run does: pick the full run's among those N instead."""
    import evaluation.simulate as sim

    original = sim.pick_corrected

    def same_as_full(n: int, fraction: float, seed: int) -> set[int]:
        return {i for i in original(total, fraction, seed) if i < n}

    sim.pick_corrected = same_as_full
    try:
        yield
    finally:
        sim.pick_corrected = original


def record_signatures(db: Path) -> dict[str, list[Any]]:
    """Per question: the chunk ids shown, and how many candidates, rankings and corrections were stored."""
    from feedback_store.store import FeedbackStore

    with FeedbackStore.open(db) as store:
        return {
            rec.question: [
                [p["chunk_id"] for p in rec.passages],
                len(rec.candidates),
                len(rec.rankings),
                len(rec.corrections),
            ]
            for rec in store.iter_interactions()
        }


def run_row(
    row: str, qa_file: Path, home: Path, index: Path, correct_fraction: float, total: int
) -> dict[str, Any]:
    """Simulate `qa_file` on a fresh store in `home`; the summary, seconds per question and the records."""
    from app.config import AppConfig
    from evaluation.simulate import SimulationOptions, simulate
    from settings.paths import Paths

    db = Paths(home).feedback_db
    for leftover in db.parent.glob(db.name + "*"):  # a fresh store (the simulator skips recorded questions)
        leftover.unlink()
    config = AppConfig.load()
    if row != "batched":
        config = config.with_(backend="llamacpp" if row == "llamacpp" else "transformers")
    options = SimulationOptions(
        qa=qa_file,
        k_candidates=4,
        correct_fraction=correct_fraction,
        index=index,
        progress=True,
        batch_size=8 if row == "batched" else 1,
    )
    patch = candidates_one_after_another() if row == "sequential" else nullcontext()
    with patch, corrections_of_the_full_run(total):
        summary = simulate(options, config=config)
    if summary.errors:
        raise SystemExit(f"{row}: {len(summary.errors)} questions failed, first: {summary.errors[0]}")
    return {
        "backend": config.backend if row != "batched" else "transformers (batched)",
        "questions": summary.questions,
        "candidates": summary.candidates,
        "rankings": summary.rankings,
        "corrections": summary.corrections,
        "both_bad": summary.both_bad,
        "seconds": round(summary.seconds, 1),
        "seconds_per_question": round(summary.seconds / max(summary.questions, 1), 2),
        "records": record_signatures(db),
    }


def same_records(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Whether every row stored the same records for the questions they share (sampled texts aside)."""
    names = [n for n in rows if "records" in rows[n]]
    out: dict[str, Any] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = rows[a]["records"].keys() & rows[b]["records"].keys()
            differ = [q for q in shared if rows[a]["records"][q] != rows[b]["records"][q]]
            out[f"{a}_vs_{b}"] = {"questions_compared": len(shared), "differing": len(differ)}
            if differ:  # the first one, to see what differs
                q = sorted(differ)[0]
                out[f"{a}_vs_{b}"]["example"] = {
                    "question": q,
                    a: rows[a]["records"][q],
                    b: rows[b]["records"][q],
                }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--squad", type=Path, default=SQUAD)
    p.add_argument("--questions", type=int, default=100, help="questions of the batched row")
    p.add_argument(
        "--llamacpp-questions", type=int, default=40, help="the first N of them for the llamacpp row"
    )
    p.add_argument("--sequential-questions", type=int, default=20, help="the first N for the sequential row")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--correct-fraction", type=float, default=0.3, help="as the loop experiment's full preset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--idle-load", type=float, default=0.5, help="wait for this 1-minute load before each row")
    p.add_argument("--idle-timeout", type=float, default=300.0)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "simulate_speed")
    p.add_argument("--out", type=Path, default=OUT_DIR / "simulate_speed.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    home = args.work / "home"
    os.environ["RAGQA_HOME"] = str(home)
    prepare_home(home)
    index = args.work / "index"
    if index.exists():  # built from this run's questions (each row checks it holds them)
        shutil.rmtree(index)
    files = {"batched": question_file(args.squad, args.questions, args.seed, args.work / "questions.json")}
    files["llamacpp"] = first_questions(
        files["batched"], args.llamacpp_questions, args.work / "q_llamacpp.json"
    )
    files["sequential"] = first_questions(
        files["batched"], args.sequential_questions, args.work / "q_seq.json"
    )
    build_index(files["batched"], index)  # once, before any row is timed
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows: dict[str, dict[str, Any]] = {}
    for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
        wait = wait_for_idle(args.idle_load, args.idle_timeout)
        print(f"[{row}] load {wait['load_before']} (waited {wait['waited_s']} s)", flush=True)
        rows[row] = {
            "wait": wait,
            **run_row(row, files[row], home, index, args.correct_fraction, args.questions),
        }
        rows[row]["load_after"] = load_average()
        print(
            f"    {rows[row]['questions']} questions, {rows[row]['seconds_per_question']} s/question",
            flush=True,
        )
    per_q = {name: r["seconds_per_question"] for name, r in rows.items()}
    summary = {
        "seconds_per_question": per_q,
        "batched_speedup_vs_sequential": (
            round(per_q["sequential"] / per_q["batched"], 2)
            if {"batched", "sequential"} <= per_q.keys()
            else None
        ),
        "llamacpp_speedup_vs_sequential": (
            round(per_q["sequential"] / per_q["llamacpp"], 2)
            if {"llamacpp", "sequential"} <= per_q.keys()
            else None
        ),
        "batched_seconds_for_questions": rows["batched"]["seconds"] if "batched" in rows else None,
        "same_records": same_records(rows),
    }
    print(f"\n{'row':<11} {'questions':>9} {'s/question':>11} {'load before':>18}")
    for name, r in rows.items():
        print(
            f"{name:<11} {r['questions']:>9} {r['seconds_per_question']:>11} {str(r['wait']['load_before']):>18}"
        )
    report = {
        "cpu": cpu(),
        "started": started,
        "settings": {
            "questions": {name: rows[name]["questions"] for name in rows},
            "k_candidates": 4,
            "home_config": HOME_CONFIG,
            "correct_fraction": args.correct_fraction,
            "seed": args.seed,
        },
        "rows": {name: {k: v for k, v in r.items() if k != "records"} for name, r in rows.items()},
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
