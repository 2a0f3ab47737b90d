"""benchmarks/relevance_gate.py: the threshold rule, and the with/without-gate comparison, on hand-made numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.relevance_gate import choose, compare_runs, sweep


def test_the_rule_picks_the_highest_threshold_that_gates_no_answerable_question() -> None:
    # 200 answerable questions, the lowest at 0.25; off-topic ones lower
    on = np.array([0.25, 0.28, 0.33] + [0.6] * 197)
    scores = {
        "on_topic": on,
        "off_topic": np.array([0.1, 0.2, 0.3, 0.4] * 50),
        "answerable": np.ones(200, dtype=bool),
    }
    rows = sweep(scores)
    chosen = choose(rows)
    assert chosen["threshold"] == pytest.approx(0.25)  # < 0.25 gates none; < 0.26 would gate one
    assert chosen["gated_on_topic_answerable"] == 0.0
    assert chosen["gated_off_topic"] == pytest.approx(0.5)  # 0.1 and 0.2 of each four


def test_squad_scores_are_the_best_sentence_of_the_nearest_chunks(tmp_path: Path) -> None:
    """The calibration's score is the app's: sentence_relevance over the K nearest chunks, on-topic and with the
    question's own article left out."""
    from app.relevance import sentence_relevance
    from benchmarks.relevance_gate import K_PASSAGES, squad_scores
    from retrieval.embedder import HashEmbedder
    from retrieval.index import HybridIndex
    from retrieval.types import Passage

    def article(title: str, text: str, question: str, n: int) -> dict:
        qa = {"id": f"{title}{n}", "question": question, "answers": [{"text": "x", "answer_start": 0}]}
        return {"title": title, "paragraphs": [{"context": text, "qas": [{**qa, "is_impossible": False}]}]}

    texts = {
        f"T{i}": f"The tower number {i} opened in {1890 + i}. It has {i + 3} floors and a red roof."
        for i in range(8)
    }
    squad = {"data": [article(t, x, f"When did tower number {t[1]} open?", 0) for t, x in texts.items()]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    emb = HashEmbedder()
    (tmp_path / "work").mkdir()
    scores = squad_scores(path, emb, tmp_path / "work")
    chunks = HybridIndex.open(tmp_path / "work" / "index", emb).chunks
    assert (
        len(scores["on_topic"]) == len(scores["articles"]) == 8 - 4
    )  # the 4 held-out articles are never read
    assert np.all(scores["on_topic"] >= scores["off_topic"])
    # on-topic with one article per chunk and K >= all chunks: the best sentence of the whole corpus
    assert len(chunks) <= K_PASSAGES
    passages = [Passage(i + 1, c.chunk_id, c.source, c.text, 0.0) for i, c in enumerate(chunks)]
    questions = [
        q["question"]
        for a in squad["data"]
        if a["title"] in scores["articles"]
        for p in a["paragraphs"]
        for q in p["qas"]
    ]
    expected = [sentence_relevance(emb, [q], passages) for q in questions]
    assert sorted(scores["on_topic"]) == pytest.approx(sorted(expected), abs=1e-5)


def _write(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def _row(qid: str, answer: str, f1: float, unanswerable: bool, gated: bool = False) -> dict:
    return {
        "id": qid,
        "question": f"question {qid}?",
        "answers": [] if unanswerable else ["gold"],
        "unanswerable": unanswerable,
        "answer": answer,
        "model_version": "v0002",
        "f1": f1,
        "abstained": answer.startswith("The documents"),
        "relevance_gated": gated,
        "error": None,
    }


def test_the_comparison_pairs_questions_and_lists_the_gated_ones(tmp_path: Path) -> None:
    no = "The documents do not contain the answer."
    on = _write(
        tmp_path / "on",
        [
            _row("a", no, 1.0, True, gated=True),  # the gate got an unanswerable one right
            _row("b", no, 0.0, False, gated=True),  # and cost an answerable one
            _row("c", "gold", 1.0, False),
            _row("d", "gold", 1.0, False),
        ],
    )
    off = _write(
        tmp_path / "off",
        [
            _row("a", "made up", 0.0, True),
            _row("b", "gold", 1.0, False),
            _row("c", "gold", 1.0, False),
            _row("d", "other", 0.0, False),  # not gated, yet different: counted as a batching change
        ],
    )
    r = compare_runs(on, off)
    assert r["n"] == 4 and r["gated"] == 2 and r["gated_unanswerable"] == 1
    assert r["f1_with_gate"] == pytest.approx(0.75) and r["f1_without_gate"] == pytest.approx(0.5)
    assert r["with_minus_without"]["f1"] == pytest.approx(0.25)
    assert r["other_answers_changed"] == 1
    assert r["abstention_with_gate"]["abstention_recall"] == pytest.approx(1.0)
    assert r["abstention_without_gate"]["abstention_rate"] == pytest.approx(0.0)
    assert [g["answer_without_gate"] for g in r["gated_questions"]] == ["made up", "gold"]
