"""A retrain fits its time budget: each stage gets its share of the time left, a TRL stage re-plans its steps and
learning-rate schedule to what fits after timing its first steps, PPO stops before the step that would overrun."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
from transformers import TrainerCallback

from tests.training.conftest import write_export
from training import time_budget
from training.data import load_export
from training.sft import build_sft_trainer
from training.trl_stage import run_trainer


def test_each_stage_gets_its_share_of_the_time_left(tiny_cfg, monkeypatch) -> None:
    cfg = tiny_cfg()  # shares: sft 0.2, reward 0.3, policy 0.5
    monkeypatch.setattr(time_budget.time, "monotonic", lambda: 100.0)
    deadline = 100.0 + 1000.0
    plan = ["export", "sft", "rm", "ppo", "merge", "evaluate", "publish"]
    assert time_budget.stage_budget_s(cfg, "sft", plan, deadline) == pytest.approx(200.0)
    # SFT done: its unused time is shared by what is left
    assert time_budget.stage_budget_s(cfg, "rm", ["rm", "ppo", "merge"], deadline) == pytest.approx(375.0)
    assert time_budget.stage_budget_s(cfg, "ppo", ["ppo", "merge"], deadline) == pytest.approx(1000.0)
    assert time_budget.stage_budget_s(cfg, "sft", plan, None) is None
    assert time_budget.stage_budget_s(cfg, "merge", plan, deadline) is None


class OneSecondPerStep(TrainerCallback):
    """A clock that moves 1 s per optimizer step (registered before the budget, so it has moved when it looks)."""

    def __init__(self) -> None:
        self.now = 0.0

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.now += 1.0


def test_a_trl_stage_replans_its_steps_and_schedule_to_fit(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg, monkeypatch
) -> None:
    clock = OneSecondPerStep()
    monkeypatch.setattr(time_budget, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    data = load_export(write_export(tmp_path / "e", demos=8))
    cfg = tiny_cfg(
        "sft.max_steps=20",
        "sft.batch_size=1",
        "sft.grad_accum=1",
        "sft.warmup=2",
        "sft.lr=0.01",
        "progress=true",
    )  # progress on: the cut also resizes the progress bar
    trainer = build_sft_trainer(cfg, tiny_model_dir, data, tmp_path / "sft")
    trainer.add_callback(clock)
    run = run_trainer(trainer, tmp_path / "sft", resume=False, budget_s=10.0)
    record = run.summary()["time_budget"]
    # 3 calibration steps at 1 s: 7 more fit in 10 s, so 10 of the planned 20
    assert record["cut"] and record["planned_steps"] == 20 and record["steps"] == 10
    assert record["seconds_per_step"] == 1.0
    assert run.summary()["steps"] == 10

    # Every logged rate (the one its step trained with) follows a 10-step warm-up + cosine schedule, and the
    # schedule ends at zero: not halfway down the planned 20-step curve.
    def planned(step: int, total: int = 10, warmup: int = 2) -> float:
        k = step - 1  # the scheduler's position when step `step` ran
        if k < warmup:
            return 0.01 * k / warmup
        return 0.01 * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))

    logged = [(row["step"], row["learning_rate"]) for row in run.history if "learning_rate" in row]
    assert logged and logged[-1][0] == 10
    for step, lr in logged:
        assert lr == pytest.approx(planned(step), rel=1e-6, abs=1e-12), step
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)


def test_a_trl_stage_counts_its_loading_and_keeps_room_for_its_heldout_scoring(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg, monkeypatch
) -> None:
    from training.dpo import build_dpo_trainer

    clock = OneSecondPerStep()
    monkeypatch.setattr(time_budget, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    data = load_export(write_export(tmp_path / "e", pairs=8, pairs_test=6))
    settings = ["dpo.max_steps=20", "dpo.batch_size=1", "dpo.grad_accum=1", "dpo.warmup=0"]

    def run(cap: str, folder: str):
        trainer, sizing = build_dpo_trainer(tiny_cfg(*settings, cap), tiny_model_dir, data, tmp_path / folder)
        trainer.add_callback(clock)
        clock.now = 0.0
        # the stage began 1 s before training did (loading the models)
        return sizing, run_trainer(trainer, tmp_path / folder, resume=False, budget_s=10.0, started=-1.0)

    # 6 held-out pairs at EVAL_COST (0.5) of a 1 s training example: 3 s kept for scoring them; 3 calibration
    # steps + 1 s of loading spent, so 10 - 4 - 3 = 3 more steps fit: 6 of 20
    sizing, whole = run("dpo.max_eval_examples=null", "all")
    record = whole.summary()["time_budget"]
    assert sizing["pairs_test_scored"] == 6 and len(whole.heldout) > 0
    assert record["reserved_s"] == 3.0 and record["heldout_examples"] == 6
    assert record["seconds_before_training"] == 1.0
    assert record["cut"] and record["steps"] == 6 and whole.summary()["steps"] == 6
    # capped at 2 held-out pairs: 1 s kept, 5 more steps fit
    sizing, capped = run("dpo.max_eval_examples=2", "capped")
    assert sizing == {**sizing, "pairs_test": 6, "pairs_test_scored": 2}
    assert capped.summary()["time_budget"]["reserved_s"] == 1.0 and capped.summary()["steps"] == 8


def test_a_trl_stage_without_a_budget_runs_its_schedule(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    data = load_export(write_export(tmp_path / "e", demos=4))
    cfg = tiny_cfg("sft.max_steps=4", "sft.batch_size=1", "sft.grad_accum=1")
    run = run_trainer(
        build_sft_trainer(cfg, tiny_model_dir, data, tmp_path / "s"), tmp_path / "s", resume=False
    )
    assert run.summary()["steps"] == 4 and "time_budget" not in run.summary()


def test_a_cut_is_said_in_the_stage_line_and_report() -> None:
    from training.report import budget_note, stage_summary

    metrics = {"steps": 10, "time_budget": {"budget_s": 10.0, "cut": True, "planned_steps": 20, "steps": 10}}
    assert budget_note(metrics) == "time budget (10 s): 10 of 20 steps"
    assert stage_summary("sft", {"status": "done", "metrics": metrics}).endswith(
        "[time budget (10 s): 10 of 20 steps]"
    )
    assert budget_note({"time_budget": {"budget_s": 10.0, "cut": False}}) == ""


def test_the_budget_is_configurable_and_checked(tiny_cfg) -> None:
    from training.config import ConfigError

    assert tiny_cfg().time_budget.minutes == 60.0
    assert tiny_cfg("time_budget.minutes=null").time_budget.minutes is None
    with pytest.raises(ConfigError, match="time_budget.minutes must be > 0"):
        tiny_cfg("time_budget.minutes=-1")
    assert tiny_cfg().time_budget.reserve_minutes == 5.0
    with pytest.raises(ConfigError, match="reserve_minutes .* must be less than"):
        tiny_cfg("time_budget.minutes=5")
    assert tiny_cfg("time_budget.minutes=5", "time_budget.reserve_minutes=0").time_budget.minutes == 5


def test_a_resumed_run_gets_what_is_left_of_its_budget(monkeypatch) -> None:
    monkeypatch.setattr(time_budget.time, "monotonic", lambda: 100.0)
    assert time_budget.run_deadline(None, {}) is None
    assert time_budget.run_deadline(0, {}) is None
    assert time_budget.run_deadline(10, {}) == pytest.approx(700.0)
    # earlier processes spent 120 s on finished stages and 30 s on one that failed (or was stopped)
    stages = {
        "export": {"status": "done", "seconds": 20.0},
        "sft": {"status": "done", "seconds": 100.0},
        "rm": {"status": "failed", "seconds": 30.0},
        "ppo": {"status": "pending"},
    }
    assert time_budget.run_deadline(10, stages) == pytest.approx(550.0)
    # 2 of the 10 minutes kept for merge, gate and publish
    assert time_budget.run_deadline(10, stages, reserve_minutes=2) == pytest.approx(430.0)


@pytest.mark.parametrize(("compiles", "per_step", "fits"), [(True, 1.0, 100), (False, 62 / 3, 6)])
def test_a_compiling_first_step_is_spent_but_not_taken_as_the_step_rate(
    monkeypatch, compiles: bool, per_step: float, fits: int
) -> None:
    """Compiled layers spend ~30-90 s compiling in step 1: the rate comes from the steps after it."""
    now = [0.0]
    monkeypatch.setattr(time_budget, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(num_processes=1),
        is_world_process_zero=lambda: True,
        callback_handler=types.SimpleNamespace(callbacks=[]),
        optimizer=None,
        create_scheduler=lambda **_: types.SimpleNamespace(step=lambda: None),
    )
    args = types.SimpleNamespace(per_device_train_batch_size=1, gradient_accumulation_steps=1)
    state = types.SimpleNamespace(global_step=0, max_steps=100)
    control = types.SimpleNamespace(should_training_stop=False)
    budget = time_budget.TimeBudget(trainer, 200.0, started=0.0, first_step_compiles=compiles)
    budget.on_train_begin(args, state, control)
    for seconds in (60.0, 1.0, 1.0):  # the compile, then two ordinary steps
        now[0] += seconds
        state.global_step += 1
        budget.on_step_end(args, state, control)
    assert budget.record["seconds_per_step"] == round(per_step, 2)
    # 200 s less the 62 spent: 138 more 1-s steps (all 100 fit), or 6 at the compile-inflated rate
    assert min(state.max_steps, 100) == (100 if compiles else 3 + fits)
