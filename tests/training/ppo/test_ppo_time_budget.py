"""PPO within a time budget (training/time_budget.py): it stops before the step that would overrun."""

from __future__ import annotations

from pathlib import Path

from tests.training.ppo.test_ppo_training import target_fraction_reward, tiny_config
from training.ppo import run_ppo
from training.ppo.toy import toy_prompts


def test_ppo_stops_before_the_step_that_would_overrun(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    result = run_ppo(
        tiny_config(total_steps=5, checkpoint_every=0, select_every=2),
        policy_dir=toy_models[0],
        prompts=toy_prompts(8),
        out_dir=tmp_path,
        reward_fn=target_fraction_reward,
        heldout_prompts=toy_prompts(10)[8:],
        time_budget_s=0.0,  # any step overruns: one step, then stop
    )
    assert [m["step"] for m in result.metrics] == [1]
    assert result.summary["time_budget"] == {"budget_s": 0.0, "cut": True, "steps": 1, "planned_steps": 5}
    assert [s["step"] for s in result.summary["selection_heldout"]] == [0, 1]  # the stopping step is scored
    assert (tmp_path / "checkpoints" / "step-000001" / "state.json").is_file()  # and checkpointed


def test_the_budget_keeps_room_for_the_step_and_the_final_scoring() -> None:
    from training.ppo.trainer import next_step_overruns

    # 1,000 s budget, 100 s per step, 60 s to score the held-out prompts
    assert not next_step_overruns(spent_s=800, per_step_s=100, scoring_s=60, budget_s=1000)  # ends at 960
    assert next_step_overruns(spent_s=850, per_step_s=100, scoring_s=60, budget_s=1000)  # would end at 1,010
    assert not next_step_overruns(spent_s=850, per_step_s=100, scoring_s=0, budget_s=1000)  # no selection
