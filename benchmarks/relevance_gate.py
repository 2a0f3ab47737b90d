"""Calibrate the relevance gate: below which dense cosine "the documents do not contain the answer" without asking.

The gate (app/qa.py, config `min_relevance`) abstains when the search query's best dense cosine to any indexed
chunk is below a threshold: nothing in the documents is about the question, so a model that answered would answer
from its own knowledge ("What is the capital of France?" -> "Paris [1]." over a software guide).

Data: squad2-dev-half's TRAINING articles only (the loop's 4 held-out articles are never read; no held-out set is
read). Their contexts are ingested as the app ingests (real embedder, the app's chunking). Every question is
scored twice, from the same embeddings:
  on-topic   best cosine over all chunks (its own article is indexed): what the app sees for a fair question
  off-topic  best cosine over the chunks of the OTHER articles (leave its article out): a question the documents
             cannot answer. Other Wikipedia articles are a hard case (shared vocabulary, related topics: the
             French and Indian War beside the Huguenots), so the off-topic rates here are a floor for questions
             about unrelated matters.
The rule fixed before the numbers were seen: the highest threshold (0.01 steps) that gates at most 1% of the
answerable on-topic questions. The guide's own questions (evaluation/guide_questions.py, the demo corpus) are
scored at the end for the record; they do not choose anything.

    python benchmarks/relevance_gate.py calibrate --squad ../shared/data/squad2-dev-half/dev-v2.0.json
        [--out docs/results/relevance_gate/relevance_gate.json]

`heldout` measures what the chosen gate does to answers: two `ragqa eval` runs of the same model on the same
questions, one with the gate (the default) and one with `min_relevance: 0`, compared question by question (F1 with
and without, the paired difference with its bootstrap CI, abstention precision/recall, and each gated question with
what the model would have answered):

    python benchmarks/relevance_gate.py heldout --set xquad=ON_DIR,OFF_DIR --set squad2=ON_DIR,OFF_DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu, load_average  # noqa: E402
from evaluation.splits import HELDOUT_ARTICLES, SPLIT_SEED, split_articles, subset_squad  # noqa: E402

OUT = REPO / "docs" / "results" / "relevance_gate" / "relevance_gate.json"
FALSE_GATE_BUDGET = 0.01  # at most this share of answerable on-topic questions may be gated
THRESHOLDS = np.round(np.arange(0.0, 0.61, 0.01), 2)


def index_matrix(corpus_dir: Path, index_dir: Path, embedder: Any) -> tuple[np.ndarray, list[str]]:
    """Ingest `corpus_dir` as the app does; (chunk vectors, chunk sources)."""
    from retrieval.index import HybridIndex
    from retrieval.ingest import ingest

    ingest(corpus_dir, index_dir, embedder, progress=False)
    index = HybridIndex.open(index_dir, embedder)
    return np.asarray(index.vectors, dtype=np.float32), [c.source for c in index.chunks]


def squad_scores(squad_path: Path, embedder: Any, work: Path) -> dict[str, Any]:
    """Per question: best cosine on-topic and off-topic, and whether it is answerable."""
    from evaluation.formats import load_qa
    from evaluation.runner import write_corpus

    squad = json.loads(squad_path.read_text(encoding="utf-8"))
    train, _heldout = split_articles(squad, HELDOUT_ARTICLES, SPLIT_SEED)
    subset = work / "train.json"
    subset.write_text(json.dumps(subset_squad(squad, train)), encoding="utf-8")
    dataset = load_qa(subset, "squad")
    write_corpus(dataset, work / "corpus")
    vectors, sources = index_matrix(work / "corpus", work / "index", embedder)
    title_of = {doc_id: doc.title for doc_id, doc in dataset.documents.items()}
    chunk_titles = np.array([title_of[Path(s).name] for s in sources])
    questions = [e.question for e in dataset.examples]
    q = np.asarray(embedder.encode(questions, batch_size=64), dtype=np.float32)
    cos = q @ vectors.T
    own = chunk_titles[None, :] == np.array([title_of[e.doc_id] for e in dataset.examples])[:, None]
    return {
        "articles": train,
        "chunks": len(sources),
        "on_topic": cos.max(axis=1),
        "off_topic": np.where(own, -1.0, cos).max(axis=1),
        "answerable": np.array([not e.unanswerable for e in dataset.examples]),
    }


def _share_below(values: np.ndarray, t: float) -> float:
    return float(np.mean(values < t)) if len(values) else float("nan")


def sweep(scores: dict[str, Any]) -> list[dict[str, float]]:
    on, off, answerable = scores["on_topic"], scores["off_topic"], scores["answerable"]
    rows = []
    for t in THRESHOLDS:
        rows.append(
            {
                "threshold": float(t),
                "gated_on_topic_answerable": _share_below(on[answerable], t),
                "gated_on_topic_unanswerable": _share_below(on[~answerable], t),
                "gated_off_topic": _share_below(off, t),
            }
        )
    return rows


def choose(rows: list[dict[str, float]]) -> dict[str, float]:
    ok = [r for r in rows if r["gated_on_topic_answerable"] <= FALSE_GATE_BUDGET]
    return max(ok, key=lambda r: r["threshold"])


def guide_scores(embedder: Any, work: Path) -> dict[str, float]:
    """Best cosine of each guide and off-topic question against the bundled guide (for the record only)."""
    from evaluation.guide_questions import GUIDE_QUESTIONS, OFF_TOPIC

    vectors, _sources = index_matrix(REPO / "app" / "demo_corpus", work / "guide_index", embedder)
    questions = [q for q, _ in GUIDE_QUESTIONS] + list(OFF_TOPIC)
    q = np.asarray(embedder.encode(questions), dtype=np.float32)
    return {
        question: round(float(c), 4)
        for question, c in zip(questions, (q @ vectors.T).max(axis=1), strict=True)
    }


def quantiles(x: np.ndarray) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(x, p)), 4) for p in (1, 5, 25, 50, 75, 95, 99)}


def compare_runs(on_dir: Path, off_dir: Path) -> dict[str, Any]:
    """One model's eval with the gate (`on_dir`) and without it (`off_dir`), question by question."""
    from benchmarks.starter_heldout import read_examples
    from evaluation.metrics import abstention_scores, paired_bootstrap_ci

    on, off = read_examples(on_dir), read_examples(off_dir)
    ids = sorted(set(on) & set(off))
    f1_on, f1_off = [float(on[i]["f1"]) for i in ids], [float(off[i]["f1"]) for i in ids]
    diff = paired_bootstrap_ci(f1_on, f1_off)
    unanswerable = [bool(on[i]["unanswerable"]) for i in ids]
    gated = [i for i in ids if on[i].get("relevance_gated")]
    changed = [i for i in ids if on[i]["answer"] != off[i]["answer"] and i not in gated]
    return {
        "n": len(ids),
        "model_version": on[ids[0]]["model_version"] if ids else None,
        "f1_with_gate": float(np.mean(f1_on)) if ids else None,
        "f1_without_gate": float(np.mean(f1_off)) if ids else None,
        "with_minus_without": {"f1": diff["diff"], "ci": diff["ci"]},
        "abstention_with_gate": abstention_scores([bool(on[i]["abstained"]) for i in ids], unanswerable),
        "abstention_without_gate": abstention_scores([bool(off[i]["abstained"]) for i in ids], unanswerable),
        "gated": len(gated),
        "gated_unanswerable": sum(bool(on[i]["unanswerable"]) for i in gated),
        # answers that differ although the question was not gated: batch composition alone (left padding)
        "other_answers_changed": len(changed),
        "gated_questions": [
            {
                "question": on[i]["question"],
                "unanswerable": on[i]["unanswerable"],
                "gold": on[i]["answers"][:2],
                "answer_without_gate": off[i]["answer"],
                "f1_without_gate": off[i]["f1"],
            }
            for i in gated
        ],
    }


def cmd_heldout(args: argparse.Namespace) -> int:
    sets = {}
    for spec in args.set:
        name, _, dirs = spec.partition("=")
        on_dir, _, off_dir = dirs.partition(",")
        sets[name] = compare_runs(Path(on_dir), Path(off_dir))
    from evaluation.runner import nan_to_none

    # JSON has no NaN (abstention recall over a set without unanswerable questions): null instead
    result = {"machine": {"cpu": cpu(), "load_average": load_average()}, "sets": nan_to_none(sets)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{'set':8s} {'n':>4s} {'F1 gate':>8s} {'F1 none':>8s} {'diff [95% CI]':>26s} {'gated':>6s} {'abst P/R gate':>14s}"
    )
    for name, r in sets.items():
        d, a = r["with_minus_without"], r["abstention_with_gate"]
        print(
            f"{name:8s} {r['n']:4d} {r['f1_with_gate']:8.3f} {r['f1_without_gate']:8.3f} "
            f"{d['f1']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] {r['gated']:6d} "
            f"{_fmt(a.get('abstention_precision'))}/{_fmt(a.get('abstention_recall'))}"
        )
    print(f"wrote {args.out}")
    return 0


def _fmt(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from retrieval.embedder import SentenceTransformerEmbedder

    t0 = time.perf_counter()
    load_start = load_average()
    embedder = SentenceTransformerEmbedder(None)
    with tempfile.TemporaryDirectory(prefix="relevance-gate-") as tmp:
        scores = squad_scores(args.squad, embedder, Path(tmp))
        guide = guide_scores(embedder, Path(tmp))
    rows = sweep(scores)
    chosen = choose(rows)
    answerable = scores["answerable"]
    result = {
        "machine": {"cpu": cpu(), "load_start": load_start, "load_end": load_average()},
        "embedder": embedder.name,
        "data": {
            "set": "squad2-dev-half training articles",
            "articles": scores["articles"],
            "chunks": scores["chunks"],
            "questions": int(len(answerable)),
            "answerable": int(answerable.sum()),
        },
        "rule": f"highest threshold gating <= {FALSE_GATE_BUDGET:.0%} of answerable on-topic questions",
        "chosen": chosen,
        "quantiles": {
            "on_topic_answerable": quantiles(scores["on_topic"][answerable]),
            "on_topic_unanswerable": quantiles(scores["on_topic"][~answerable]),
            "off_topic": quantiles(scores["off_topic"]),
        },
        "sweep": rows,
        "guide_best_cosine": guide,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{'threshold':>9} {'gated answerable':>16} {'gated unanswerable':>18} {'gated off-topic':>15}")
    for r in rows[::5] + ([chosen] if chosen not in rows[::5] else []):
        print(
            f"{r['threshold']:9.2f} {r['gated_on_topic_answerable']:16.3f} "
            f"{r['gated_on_topic_unanswerable']:18.3f} {r['gated_off_topic']:15.3f}"
        )
    print(f"chosen: {chosen}")
    for question, c in guide.items():
        print(f"  {c:6.3f}  {question}")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("calibrate", help="choose the threshold on squad2-dev-half's training articles")
    c.add_argument("--squad", type=Path, required=True, help="squad2-dev-half's dev-v2.0.json")
    c.add_argument("--out", type=Path, default=OUT)
    h = sub.add_parser("heldout", help="one model's eval with and without the gate, question by question")
    h.add_argument("--set", action="append", required=True, help="NAME=EVAL_DIR_WITH_GATE,EVAL_DIR_WITHOUT")
    h.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    return cmd_calibrate(args) if args.command == "calibrate" else cmd_heldout(args)


if __name__ == "__main__":
    raise SystemExit(main())
