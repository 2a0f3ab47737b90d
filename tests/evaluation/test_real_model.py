"""`ragqa eval` with the real default model (SmolLM2-135M) and the real embedder: slow, run with -m slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.runner import EvalOptions, run_eval


@pytest.mark.slow
def test_eval_real_default_model(default_registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_eval(
        # batch_size=1: the app's exact ask path, the only mode that times first tokens
        EvalOptions(
            fixtures_dir / "squad_v2.json", out_dir=out, max_new_tokens=48, progress=False, batch_size=1
        )
    )
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["counts"]["errors"] == 0
    assert m["retrieval"]["recall@1"] == 1.0
    # The fixture's answers are stated plainly in one short passage: the real model finds some of them.
    assert m["answers"]["contains_gold_rate"] > 0
    assert all(r.answer for r in run.results)
    assert m["latency_ms"]["first_token_p50"] < m["latency_ms"]["total_p50"]
