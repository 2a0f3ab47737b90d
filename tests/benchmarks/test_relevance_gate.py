"""benchmarks/relevance_gate.py: the threshold rule, and the with/without-gate comparison, on hand-made numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.relevance_gate import choose, compare_runs, sweep


def test_the_rule_picks_the_highest_threshold_within_the_false_gate_budget() -> None:
    # 200 answerable questions: two below 0.30 (1%), a third below 0.35 (1.5%); off-topic ones lower
    on = np.array([0.25, 0.28, 0.33] + [0.6] * 197)
    scores = {
        "on_topic": on,
        "off_topic": np.array([0.1, 0.2, 0.3, 0.4] * 50),
        "answerable": np.ones(200, dtype=bool),
    }
    rows = sweep(scores)
    chosen = choose(rows)
    assert chosen["threshold"] == pytest.approx(0.33)  # < 0.33 gates 2 of 200; < 0.34 would gate 3
    assert chosen["gated_on_topic_answerable"] == pytest.approx(0.01)
    assert chosen["gated_off_topic"] == pytest.approx(0.75)  # 0.1, 0.2, 0.3 of each four


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
