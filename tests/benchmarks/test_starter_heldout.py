"""benchmarks/starter_heldout.py: the summary's tables and paired difference from the eval folders it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.starter_heldout import MODELS, SETS, summarise


def write_eval(folder: Path, f1s: list[float], abstained: float) -> None:
    folder.mkdir(parents=True)
    rows = [{"id": f"q{i}", "f1": f, "error": None} for i, f in enumerate(f1s)]
    (folder / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    answers = {"f1": sum(f1s) / len(f1s), "em": 0.0, "abstention_rate": abstained, "mean_answer_words": 3.0}
    (folder / "report.json").write_text(json.dumps({"metrics": {"answers": answers}}))


def test_summary_pairs_the_two_models_by_question(tmp_path: Path) -> None:
    for name in SETS:
        write_eval(tmp_path / f"{name}-{MODELS['base']}", [0.0, 0.5, 0.25, 0.25], 0.0)
        write_eval(tmp_path / f"{name}-{MODELS['starter']}", [0.5, 1.0, 0.75, 0.75], 0.25)
    summary = summarise(tmp_path)
    for name in SETS:
        starter = summary["heldout"][name]["starter"]
        assert starter["n"] == 4 and starter["f1"] == pytest.approx(0.75)
        assert starter["f1_ci"][0] <= 0.75 <= starter["f1_ci"][1]
        assert starter["abstention_rate"] == 0.25
        delta = summary["deltas"][name]["starter_minus_base"]
        assert delta["f1"] == pytest.approx(0.5) and delta["ci"] == pytest.approx(
            [0.5, 0.5]
        )  # a constant shift
