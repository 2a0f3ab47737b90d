"""Follow-ups vs changes of topic: which retrieval query finds the right document in a conversation.

Set: tests/fixtures/followups.jsonl, pairs of (previous question, question) over the bundled demo corpus
(app/demo_corpus/): `follow_up` pairs whose question only makes sense with the previous one, and
`topic_change` pairs whose question is about another document. Each names the expected source document.
Index: the demo corpus ingested with the real embedder (all-MiniLM-L6-v2), hybrid search as the app does.

Methods (what is searched for the second question):
  joined     previous question + question, always (the app before: a topic change drags the old topic in)
  alone      the question alone, always (follow-ups lose their subject)
  detector   joined when the question looks like a follow-up (starts with and/but/what about, has a pronoun
             or demonstrative, or has at most 4 words), else alone
  cosine+M   joined when its best dense cosine beats the question alone's by more than M; the app's
             method (retrieval/followup.py) is M = JOIN_MARGIN (0.10), the others show how sensitive it is
Metrics per kind: hit@1 and hit@k (the expected document among the top 1 / k passages), and for topic
changes the share of the top-k passages that come from the previous question's document (the leak).

`relevance_gate`: the app's relevance gate (QAService, its default threshold) on the second question of every pair,
and on each off-topic question of evaluation/guide_questions.py asked right after each distinct previous question
of the set: a follow-up or a topic change must pass, the off-topic ones must be gated.

    python benchmarks/followups.py [--k 4] [--out docs/results/followups/followups.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SET = REPO / "tests" / "fixtures" / "followups.jsonl"
CORPUS = REPO / "app" / "demo_corpus"
OUT = REPO / "docs" / "results" / "followups" / "followups.json"
KINDS = ("follow_up", "topic_change")
MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2)  # the cosine rule's margin, swept: how sensitive is the choice


def load_set(path: Path = SET) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_retriever(index_dir: Path, embedder: Any) -> Any:
    """The demo corpus ingested into `index_dir`, opened as the app opens it."""
    from retrieval.index import HybridIndex
    from retrieval.ingest import ingest
    from retrieval.retriever import Retriever

    ingest(CORPUS, index_dir, embedder, progress=False)
    return Retriever(HybridIndex.open(index_dir, embedder), embedder)


def _search(retriever: Any, query: str, k: int) -> list[Any]:
    return retriever.search(query, k=k)


def method_functions(retriever: Any, k: int) -> dict[str, Callable[[str, str], list[Any]]]:
    """method name -> search(question, previous) -> passages."""
    from retrieval.followup import JOIN_MARGIN, choose_query, joined_query, looks_like_follow_up

    def cosine(margin: float) -> Callable[[str, str], list[Any]]:
        def search(question: str, previous: str) -> list[Any]:
            choice = choose_query(retriever, question, previous, margin=margin)
            return retriever.search_with_vector(choice.query, choice.vector, k)

        return search

    methods = {
        "joined": lambda q, p: _search(retriever, joined_query(q, p), k),
        "alone": lambda q, p: _search(retriever, q, k),
        "detector": lambda q, p: _search(retriever, joined_query(q, p) if looks_like_follow_up(q) else q, k),
    }
    for margin in MARGINS:
        methods[f"cosine+{margin:.2f}"] = cosine(margin)
    methods["app"] = cosine(JOIN_MARGIN)  # what QAService.retrieve does
    return methods


def evaluate(
    retriever: Any, rows: Sequence[dict[str, str]], k: int = 4, methods: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {kind: {"n", "hit@1", "hit@k", "leak@k"?, "ms_per_query"}}} over the set (all methods or
    the named ones)."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for method, search in method_functions(retriever, k).items():
        if methods is not None and method not in methods:
            continue
        results[method] = {}
        for kind in KINDS:
            subset = [r for r in rows if r["kind"] == kind]
            hit1 = hitk = leak = 0.0
            t0 = time.perf_counter()
            for row in subset:
                sources = [p.source for p in search(row["question"], row["previous"])]
                hit1 += bool(sources) and sources[0] == row["expected"]
                hitk += row["expected"] in sources
                if kind == "topic_change":
                    leak += sum(s == row["previous_source"] for s in sources) / max(len(sources), 1)
            ms = (time.perf_counter() - t0) * 1000 / max(len(subset), 1)
            stats = {
                "n": len(subset),
                "hit@1": hit1 / len(subset),
                "hit@k": hitk / len(subset),
                "ms_per_query": ms,
            }
            if kind == "topic_change":
                stats["leak@k"] = leak / len(subset)
            results[method][kind] = stats
    return results


def gate_in_chats(rows: Sequence[dict[str, str]], index_dir: Path, embedder: Any) -> dict[str, Any]:
    """The app's relevance gate (QAService, default threshold) on the second question of each pair, and on each
    off-topic question (evaluation/guide_questions.py) asked right after each distinct previous question of the
    set: a real follow-up must pass, an off-topic question must be gated however close the previous one was."""
    from app.config import AppConfig
    from app.qa import QAService
    from evaluation.guide_questions import OFF_TOPIC

    cfg = AppConfig.load()
    cfg.paths.index_dir.parent.mkdir(parents=True, exist_ok=True)
    if cfg.paths.index_dir.exists():
        raise SystemExit(f"{cfg.paths.index_dir} exists: run with RAGQA_HOME set to an empty folder")
    shutil.copytree(index_dir, cfg.paths.index_dir)
    qa = QAService(cfg, embedder=embedder)

    def judged(question: str, previous: str) -> dict[str, Any]:
        history = [{"role": "user", "content": previous}, {"role": "assistant", "content": "..."}]
        r = qa.retrieve_scored(question, history)
        return {
            "question": question,
            "previous": previous,
            "score": round(r.best_cosine, 4),
            "gated": qa.gated(r),
        }

    pairs = {
        kind: [judged(r["question"], r["previous"]) for r in rows if r["kind"] == kind] for kind in KINDS
    }
    previous = sorted({r["previous"] for r in rows})
    pairs["off_topic_after_on_topic"] = [judged(q, p) for p in previous for q in OFF_TOPIC]
    return {
        "threshold": qa.min_relevance(),
        "gated": {kind: sum(j["gated"] for j in js) for kind, js in pairs.items()},
        "n": {kind: len(js) for kind, js in pairs.items()},
        "pairs": pairs,
    }


def machine() -> dict[str, Any]:
    """CPU model, the flags that decide the embedder's speed, load average: context for the timings."""
    from benchmarks.machine import cpu, load_average

    info = cpu()
    return {
        "cpu": info["model"],
        "flags": info["flags"],
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
    }


def table(results: dict[str, dict[str, dict[str, float]]], k: int) -> str:
    head = f"{'method':<12} | {'follow-up hit@1':>15} {'hit@' + str(k):>7} | {'topic change hit@1':>18} {'hit@' + str(k):>7} {'leak@' + str(k):>7} | ms/q"
    lines = [head, "-" * len(head)]
    for method, r in results.items():
        f, t = r["follow_up"], r["topic_change"]
        lines.append(
            f"{method:<12} | {f['hit@1']:>15.2f} {f['hit@k']:>7.2f} | {t['hit@1']:>18.2f} {t['hit@k']:>7.2f} "
            f"{t['leak@k']:>7.2f} | {(f['ms_per_query'] + t['ms_per_query']) / 2:.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=4, help="passages per question (the app's k)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from retrieval.embedder import SentenceTransformerEmbedder

    rows = load_set()
    embedder = SentenceTransformerEmbedder()
    with tempfile.TemporaryDirectory() as tmp:
        retriever = build_retriever(Path(tmp) / "index", embedder)
        results = evaluate(retriever, rows, args.k)
        chunks = len(retriever.index)
        os.environ["RAGQA_HOME"] = str(Path(tmp) / "home")
        gate = gate_in_chats(rows, Path(tmp) / "index", embedder)
    print(table(results, args.k))
    print(f"relevance gate in chats (threshold {gate['threshold']}): gated {gate['gated']} of {gate['n']}")
    report = {
        "set": str(SET.relative_to(REPO)),
        "corpus": str(CORPUS.relative_to(REPO)),
        "chunks": chunks,
        "embedder": embedder.name,
        "k": args.k,
        "pairs": {kind: sum(r["kind"] == kind for r in rows) for kind in KINDS},
        "results": results,
        "relevance_gate": gate,
        "machine": machine(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
