"""benchmarks/simulate_speed.py: its question files and the record comparison (no model runs here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.simulate_speed import first_questions, same_records, write_subset


def _squad() -> dict:
    def para(title: str, n: int) -> dict:
        return {
            "context": f"{title} context {n}.",
            "qas": [
                {"id": f"{title}-{n}-{i}", "question": f"q {title} {n} {i}?", "answers": []} for i in range(2)
            ],
        }

    return {"data": [{"title": t, "paragraphs": [para(t, n) for n in range(2)]} for t in ("A", "B")]}


def _ids(path: Path) -> list[str]:
    data = json.loads(path.read_text())["data"]
    return [q["id"] for a in data for p in a["paragraphs"] for q in p["qas"]]


def test_subset_keeps_only_the_asked_questions_in_file_order_and_drops_empty_parts(tmp_path: Path) -> None:
    out = write_subset(_squad(), {"B-1-0", "A-0-1", "A-0-0"}, tmp_path / "s.json")
    assert _ids(out) == ["A-0-0", "A-0-1", "B-1-0"]
    data = json.loads(out.read_text())["data"]
    assert [len(a["paragraphs"]) for a in data] == [
        1,
        1,
    ]  # A's paragraph 1 and B's paragraph 0 had none asked
    assert _ids(first_questions(out, 2, tmp_path / "f.json")) == ["A-0-0", "A-0-1"]


def test_same_records_counts_questions_whose_stored_rows_differ() -> None:
    rows = {
        "batched": {"records": {"q1": [["c1"], 4, 1, 0], "q2": [["c2"], 4, 1, 1], "q3": [["c3"], 4, 1, 0]}},
        "sequential": {"records": {"q1": [["c1"], 4, 1, 0], "q2": [["c9"], 4, 1, 1]}},
        "failed": {"error": "boom"},
    }
    compared = same_records(rows)["batched_vs_sequential"]
    assert (compared["questions_compared"], compared["differing"]) == (2, 1)
    assert compared["example"] == {
        "question": "q2",
        "batched": [["c2"], 4, 1, 1],
        "sequential": [["c9"], 4, 1, 1],
    }


def test_a_shorter_row_corrects_the_full_runs_questions_among_its_own() -> None:
    import evaluation.simulate as sim
    from benchmarks.simulate_speed import corrections_of_the_full_run

    full = sim.pick_corrected(100, 0.3, 0)
    with corrections_of_the_full_run(100):
        assert sim.pick_corrected(20, 0.3, 0) == {i for i in full if i < 20}
    assert sim.pick_corrected(20, 0.3, 0) != {i for i in full if i < 20}  # restored afterwards
