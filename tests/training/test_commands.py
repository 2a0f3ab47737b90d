"""`ragqa retrain` from the command line: dry run on a real feedback store, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.conftest import TINY_CONFIG, prompt_for


def run_cli(*argv: str) -> int:
    """`ragqa retrain ...` through the ragqa command (its parser and its one error boundary)."""
    from app.cli import main

    return main(["retrain", *argv])


def fill_store(db: Path, n: int) -> None:
    """n interactions with two candidates, a ranking and a correction each (the app's write path)."""
    from feedback_store import FeedbackStore

    with FeedbackStore.open(db) as store:
        for i in range(n):
            question = f"Question number {i}: where is it?"
            ids = store.record_interaction(
                question,
                [{"chunk_id": f"c{i}", "source": "facts.md", "text": f"It is in city {i}.", "score": 1.0}],
                [
                    {"text": f"In city {i} [1].", "model_version": "v0001"},
                    {"text": "No idea.", "model_version": "v0001"},
                ],
                session_id="s",
            )
            a, b = ids.candidate_ids
            store.record_ranking(ids.interaction_id, [[a], [b]], session_id="s")
            store.record_correction(ids.interaction_id, f"City {i} [1].", replaces=[b], session_id="s")


def test_dry_run_prints_plan_and_counts_from_the_store(
    tiny_registry: Path, ragqa_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_store(ragqa_home / "feedback.db", 12)
    assert run_cli("--config", str(TINY_CONFIG), "--dry-run", "--set", "data.test_fraction=0.25") == 0
    out = capsys.readouterr().out
    assert "retrain plan (dry run" in out
    for stage in ("export", "sft", "rm", "ppo", "merge", "evaluate", "publish"):
        assert f". {stage}" in out
    assert "demonstrations" in out and "preference pairs" in out and "held-out prompts" in out
    assert not (ragqa_home / "runs").exists()  # a dry run trains and records nothing


def test_too_little_data_is_one_error_line(
    tiny_registry: Path, ragqa_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_store(ragqa_home / "feedback.db", 1)
    assert run_cli("--config", str(TINY_CONFIG), "--set", "data.test_fraction=0.0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: too little data: 1 PPO prompts in the train split (need at least 2)")
    assert not any("Traceback" in line for line in err)


def test_unknown_config_key_is_one_error_line(
    tiny_registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("--config", str(TINY_CONFIG), "--set", "sft.lrr=1") == 1
    assert capsys.readouterr().err.startswith("error: unknown config key 'sft.lrr'")


def test_bad_stage_list_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        run_cli("--stages", "sft,grpo")


def test_prompt_fixture_is_the_serving_format() -> None:
    from retrieval.prompt import SYSTEM_PROMPT

    assert prompt_for(0, serving_format=True)[0] == {"role": "system", "content": SYSTEM_PROMPT}
