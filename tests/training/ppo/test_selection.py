"""The PPO stage hands on the best policy on held-out prompts (reward, within KL and length bounds), not the last."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.training.ppo.test_ppo_training import target_fraction_reward, tiny_config
from training.ppo import run_ppo
from training.ppo.selection import HeldoutScore, PolicySelector
from training.ppo.toy import toy_prompts


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


def test_the_best_eligible_policy_wins_and_ties_keep_the_earlier() -> None:
    selector = PolicySelector(kl_limit=5.0, max_length_ratio=1.5)
    assert selector.offer(HeldoutScore(0, reward=0.1, kl=0.0, length=20), state(0))
    assert selector.offer(HeldoutScore(10, reward=0.4, kl=3.0, length=25), state(10))
    assert not selector.offer(HeldoutScore(20, reward=0.9, kl=7.5, length=22), state(20))  # KL over the limit
    assert not selector.offer(HeldoutScore(30, reward=0.8, kl=1.0, length=31), state(30))  # > 1.5 x 20 tokens
    assert not selector.offer(
        HeldoutScore(40, reward=0.4, kl=1.0, length=20), state(40)
    )  # a tie: keep step 10
    assert not selector.offer(HeldoutScore(50, reward=0.2, kl=0.5, length=20), state(50))  # collapsed
    assert selector.best.step == 10 and float(selector.best_state["w"][0]) == 10
    summary = selector.summary()
    assert summary["selected_step"] == 10 and not summary["selection_kept_start"]
    assert [s["step"] for s in summary["selection_heldout"]] == [0, 10, 20, 30, 40, 50]
    assert summary["last_heldout_reward"] == 0.2


def test_the_start_is_kept_when_no_update_beats_it() -> None:
    selector = PolicySelector(kl_limit=5.0, max_length_ratio=1.5)
    selector.offer(HeldoutScore(0, reward=0.5, kl=0.0, length=10), state(0))
    selector.offer(HeldoutScore(5, reward=0.3, kl=2.0, length=10), state(5))
    assert selector.summary()["selection_kept_start"] and selector.summary()["selected_step"] == 0


HELDOUT = toy_prompts(14)[10:]  # 4 prompts the run never trains on (it trains on the first 10)


def run(tmp_path: Path, toy_models: tuple[Path, Path], name: str, heldout=HELDOUT, **overrides: object):
    settings = {"total_steps": 4, "lr": 1e-2, "checkpoint_every": 0, "select_every": 1, **overrides}
    return run_ppo(
        tiny_config(**settings),
        policy_dir=toy_models[0],
        prompts=toy_prompts(10),
        out_dir=tmp_path / name,
        reward_fn=target_fraction_reward,
        heldout_prompts=heldout,
    )


def test_a_run_saves_the_selected_policy_not_the_last(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    # Only the start (KL exactly 0: LoRA B is zero) fits under a KL limit of 1e-9, so the saved policy adapter
    # must be the untrained one although four updates moved it.
    result = run(tmp_path, toy_models, "strict", select_kl_limit=1e-9, checkpoint_every=4)
    summary = result.summary
    assert [s["step"] for s in summary["selection_heldout"]] == [0, 1, 2, 3, 4]
    assert summary["selection_heldout"][0]["kl"] == 0.0
    assert summary["selected_step"] == 0 and summary["selection_kept_start"]
    saved = load_file(str(result.policy_adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for n, t in saved.items() if "lora_B" in n]
    assert lora_b and all(float(t.abs().max()) == 0.0 for t in lora_b)
    trained = torch.load(tmp_path / "strict" / "checkpoints" / "step-000004" / "trainable.pt")
    assert any(float(t.abs().max()) > 0 for n, t in trained.items() if "lora_B" in n and "policy" in n)
    # the held-out curve is in the per-step metrics and plotted
    assert [m["heldout_kl"] > 0 for m in result.metrics] == [True] * 4


def test_selection_leaves_the_training_run_unchanged(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    on = run(tmp_path, toy_models, "on")
    off = run(tmp_path, toy_models, "off", heldout=None)
    assert [m["score"] for m in on.metrics] == [m["score"] for m in off.metrics]  # same rollouts, same RNG
    assert off.summary["selected_step"] is None and "selection_heldout" not in off.summary
    best = max(
        (s for s in on.summary["selection_heldout"] if s["kl"] <= 10.0),
        key=lambda s: (s["reward"], -s["step"]),
    )
    assert on.summary["selected_step"] == best["step"]


def test_a_resumed_run_selects_as_an_uninterrupted_one(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    straight = run(tmp_path, toy_models, "straight", checkpoint_every=2)
    run(tmp_path, toy_models, "resumed", checkpoint_every=2, total_steps=2)
    resumed = run_ppo(
        tiny_config(total_steps=4, lr=1e-2, checkpoint_every=2, select_every=1),
        policy_dir=toy_models[0],
        prompts=toy_prompts(10),
        out_dir=tmp_path / "resumed",
        reward_fn=target_fraction_reward,
        heldout_prompts=HELDOUT,
        resume=True,
    )
    steps = [s["step"] for s in resumed.summary["selection_heldout"]]
    assert steps == [0, 1, 2, 3, 4]  # steps 0-2 restored from the checkpoint, not scored twice
    first = [s["reward"] for s in straight.summary["selection_heldout"][:3]]
    assert [s["reward"] for s in resumed.summary["selection_heldout"][:3]] == first
    assert resumed.summary["selected_step"] is not None


def test_select_every_zero_keeps_the_last_policy(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    result = run(tmp_path, toy_models, "zero", select_every=0, total_steps=1)
    assert result.summary["selected_step"] is None
