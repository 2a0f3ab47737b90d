"""benchmarks/heldout_compare.py: models compared on the questions they share, against the named reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.heldout_compare import main


def _folder(root: Path, f1s: dict[str, float]) -> None:
    root.mkdir(parents=True)
    rows = [{"id": q, "f1": f, "error": None} for q, f in f1s.items()]
    (root / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    mean = sum(f1s.values()) / len(f1s)
    answers = {
        "f1": mean,
        "f1_answerable": mean,
        "em": mean,
        "contains_gold_rate": mean,
        "abstention_rate": 0.0,
    }
    answers |= {"abstention_precision": None, "abstention_recall": None, "mean_answer_words": 3.0}
    (root / "report.json").write_text(json.dumps({"metrics": {"answers": answers}}), encoding="utf-8")


def test_the_delta_is_paired_over_the_shared_questions(tmp_path: Path) -> None:
    _folder(tmp_path / "xquad-ref", {"a": 0.0, "b": 1.0, "c": 0.5})
    _folder(tmp_path / "xquad-new", {"a": 1.0, "b": 1.0, "d": 0.0})  # d: not asked of the reference
    out = tmp_path / "cmp.json"
    argv = ["--run", f"ref={tmp_path}/{{set}}-ref", "--run", f"new={tmp_path}/{{set}}-new"]
    assert main([*argv, "--reference", "ref", "--sets", "xquad", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    delta = summary["deltas"]["xquad"]["new_minus_ref"]
    assert delta["n"] == 2 and delta["f1"] == pytest.approx(0.5)  # a: +1, b: 0
    assert summary["heldout"]["xquad"]["new"]["n"] == 3
    with pytest.raises(SystemExit, match="not one of the runs"):
        main([*argv, "--reference", "other", "--sets", "xquad", "--out", str(out)])
