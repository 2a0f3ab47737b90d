"""benchmarks/loop.py against the real CLIs it drives: the simulator's and retrain's parsers accept what the loop
passes, the presets clear the retrain's data minimums, and the retrain's outcome is turned into models to evaluate
(an SFT-only version and a final version, published or gated out) without touching the registry's `current`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.loop import (
    FULL,
    QUICK,
    metric_rows,
    models_to_evaluate,
    parse_args,
    retrain_command,
    simulate_command,
    stage_table,
)


def _retrain_parser() -> argparse.ArgumentParser:
    from training.commands import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd"))
    return parser


def _set_value(preset_retrain: tuple[str, ...], key: str) -> str | None:
    return next((s.split("=", 1)[1] for s in preset_retrain if s.startswith(key + "=")), None)


def test_simulate_command_is_accepted_by_the_simulator(tmp_path: Path) -> None:
    from scripts.simulate_feedback import build_parser

    args = parse_args(["--quick", "--sim-limit", "7", "--correct-fraction", "0.25", "--seed", "3"])
    cmd = simulate_command(tmp_path / "train.json", args)
    assert cmd[1].endswith("scripts/simulate_feedback.py")
    parsed = build_parser().parse_args(cmd[2:])
    assert parsed.qa == tmp_path / "train.json"
    assert (parsed.k_candidates, parsed.limit, parsed.correct_fraction, parsed.seed) == (4, 7, 0.25, 3)
    assert parsed.only_answerable and parsed.batch


@pytest.mark.parametrize("quick", [True, False])
def test_retrain_command_parses_and_its_overrides_make_a_valid_config(quick: bool) -> None:
    from training.config import load_config

    args = parse_args(["--quick"] if quick else [])
    cmd = retrain_command(args)
    assert cmd[1:4] == ["-m", "app.cli", "retrain"]
    parsed = _retrain_parser().parse_args(cmd[3:])
    assert parsed.overrides == list(args.preset.retrain)
    cfg = load_config(None, parsed.overrides)  # unknown keys or bad values raise ConfigError
    assert cfg.algorithm == "ppo"  # all stages: sft, rm, ppo (+ merge, gate, publish)
    assert cfg.ppo_config().total_steps == int(_set_value(args.preset.retrain, "ppo.total_steps"))


def test_user_retrain_args_come_last_and_win() -> None:
    from training.config import load_config

    args = parse_args(["--quick", "--retrain-args", "--set ppo.total_steps=5 --no-publish"])
    parsed = _retrain_parser().parse_args(retrain_command(args)[3:])
    assert parsed.no_publish
    assert load_config(None, parsed.overrides).ppo_config().total_steps == 5


@pytest.mark.parametrize("preset", [QUICK, FULL], ids=["quick", "full"])
def test_presets_give_every_stage_enough_data(preset) -> None:
    """Demonstrations come only from corrections: round(limit * fraction) of them, ~10% go to the test split.

    The minimums are those of default.yaml unless the preset lowers them; each must be cleared with room for
    the hash split and for corrections the store refuses (a candidate that already says the gold answer).
    """
    from training.config import load_config

    cfg = load_config(None, list(preset.retrain))
    corrections = round(preset.sim_limit * preset.correct_fraction)
    assert int(corrections * 0.75) >= cfg.data.min_demonstrations
    # each correction alone gives 4 pairs (correction over every candidate)
    assert int(corrections * 4 * 0.75) >= cfg.data.min_pairs
    assert int(preset.sim_limit * 0.75) >= cfg.data.min_prompts
    assert cfg.sft.max_steps != 0 and cfg.reward.max_steps != 0


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_text("weights")
    return path


def _registry_with_base(home: Path):
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(home / "models")
    registry.publish_folder(_model_folder(home / "src-base"), {"kind": "base"})
    return registry


def _state(run: Path, publish: dict) -> dict:
    return {
        "plan": ["export", "sft", "rm", "ppo", "merge", "evaluate", "publish"],
        "stages": {
            "export": {"status": "done", "seconds": 1.0, "outputs": {}},
            "sft": {"status": "done", "seconds": 2.5, "outputs": {"merged": str(run / "sft" / "merged")}},
            "rm": {"status": "done", "seconds": 3.0, "outputs": {}},
            "ppo": {"status": "failed", "reason": "boom", "outputs": {}},
            "merge": {"status": "done", "seconds": 1.5, "outputs": {"merged": str(run / "merged")}},
            "publish": publish,
        },
    }


def test_gated_out_candidate_is_still_evaluated_and_current_stays_base(tmp_path: Path) -> None:
    registry = _registry_with_base(tmp_path)
    run = tmp_path / "runs" / "r1"
    _model_folder(run / "sft" / "merged")
    _model_folder(run / "merged")
    state = _state(
        run, {"status": "skipped", "reason": "not published: gate failed: win rate", "outputs": {}}
    )
    not_run: list[str] = []
    versions, how = models_to_evaluate(tmp_path, state, not_run)
    assert versions == {"base": "v0001", "sft": "v0002", "final": "v0003"}
    assert registry.current_name() == "v0001"
    assert registry.get("v0002").manifest["kind"] == "sft-only"
    assert registry.get("v0003").manifest["kind"] == "candidate-not-published"
    assert "NOT published" in how and "gate failed" in how and not not_run
    rows = stage_table(state)
    assert [r["stage"] for r in rows][-3:] == ["merge", "evaluate", "publish"]
    assert rows[3] == {"stage": "ppo", "status": "failed", "seconds": None, "reason": "boom"}
    assert rows[5]["status"] == "not run"


def test_published_final_is_used_and_missing_sft_is_reported(tmp_path: Path) -> None:
    registry = _registry_with_base(tmp_path)
    registry.publish_folder(_model_folder(tmp_path / "src-final"), {"kind": "retrain"})  # v0002, current
    run = tmp_path / "runs" / "r1"
    state = _state(run, {"status": "done", "reason": "published", "outputs": {"version": "v0002"}})
    state["stages"]["sft"] = {"status": "skipped", "reason": "too few", "outputs": {}}
    not_run: list[str] = []
    versions, how = models_to_evaluate(tmp_path, state, not_run)
    assert versions == {"base": "v0001", "final": "v0002"}
    assert registry.current_name() == "v0002" and "published by the retrain" in how
    assert len(not_run) == 1 and "SFT-only" in not_run[0]


def test_metric_rows_put_each_model_in_its_column() -> None:
    answers = {"f1": 0.25, "em": 0.0, "mean_answer_words": 30.0}
    report = {
        "metrics": {
            "heldout": {
                "base": {"answers": answers, "retrieval": {}, "latency_ms": {}},
                "final": {"answers": {**answers, "f1": 0.5}, "retrieval": {}, "latency_ms": {}},
            }
        },
        "rm_win_rate": {
            "heldout": {
                "final": {
                    "judge": "reward model",
                    "win_rate_b": 0.75,
                    "mean_reward": 1.0,
                    "mean_reward_base": -1.0,
                }
            }
        },
        "kl_vs_base": {"final": {"kl_per_token": 0.1, "kl_per_answer": 2.0}},
    }
    rows = {r[0]: r[1:] for r in metric_rows(report, "heldout")}
    assert rows["F1"] == (0.25, 0.5)
    assert rows["win rate vs base (reward model)"] == (None, 0.75)
    assert rows["mean RM reward"] == (-1.0, 1.0)
    assert rows["KL vs base, nats/token (both sets)"] == (None, 0.1)
    assert json.dumps(rows)  # JSON-able for report.json
