"""run_ppo end to end on the tiny random Llama: it learns a toy reward, keeps the reference, resumes exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.ppo import PPOConfig, config_from_dict, run_ppo
from training.ppo.toy import toy_prompts

TARGETS = torch.arange(69, 85)  # 16 of the 128 ids (lowercase letters): a random policy hits ~1/8 of them


def target_fraction_reward(prompt_ids: list[torch.Tensor], response_ids: list[torch.Tensor]) -> torch.Tensor:
    """Toy reward: the share of response tokens that are among TARGETS."""
    return torch.tensor([float(torch.isin(r, TARGETS).float().mean()) for r in response_ids])


def tiny_config(**overrides: object) -> PPOConfig:
    values = {
        "total_steps": 2,
        "batch_size": 8,
        "mini_batch_size": 4,
        "ppo_epochs": 2,
        "max_new_tokens": 12,
        "lr": 5e-3,
        "lora_r": 8,
        "lora_alpha": 16,
        "temperature": 1.0,
        "bf16": False,
        "checkpoint_every": 2,
        "progress": False,
        "plots": False,
    }
    values.update(overrides)
    return config_from_dict(values)


def test_ppo_raises_a_toy_reward_and_keeps_the_reference(
    toy_models: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = tiny_config(
        total_steps=25,
        batch_size=16,
        mini_batch_size=8,
        ppo_epochs=4,
        max_new_tokens=16,
        lr=1e-2,
        kl_coef=0.01,
        missing_eos_penalty=None,
        checkpoint_every=0,
        plots=True,
    )
    result = run_ppo(
        cfg,
        policy_dir=toy_models[0],
        prompts=toy_prompts(16),
        out_dir=tmp_path,
        reward_fn=target_fraction_reward,
    )
    scores = [m["score"] for m in result.metrics]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert first < 0.25
    assert last > first + 0.1, scores
    assert all(math.isfinite(m["kl"]) for m in result.metrics)
    assert result.metrics[0]["kl"] == 0.0  # LoRA B starts at zero: policy == reference
    assert result.summary["reference_logits_max_abs_change"] == 0.0
    # artefacts: metrics while running and at the end, plots, a loadable policy adapter
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 26))
    step = json.loads(lines[0])  # where a step's time went
    assert step["rollout_seconds"] > 0 and step["update_seconds"] > 0
    assert step["rollout_seconds"] + step["update_seconds"] == pytest.approx(step["seconds_per_step"])
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["steps"] == 25
    for name in ("reward", "kl", "response_length", "value_loss"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 1000
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(toy_models[0])), str(result.policy_adapter_dir)
    )
    assert peft_model.peft_config["default"].r == 8


def test_first_update_with_zero_lr_sees_ratio_one(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    """Old log-probs (rollout) and new ones (update) come from the same computation: no phantom policy change."""
    cfg = tiny_config(total_steps=1, lr=0.0, checkpoint_every=0)
    result = run_ppo(
        cfg,
        policy_dir=toy_models[0],
        prompts=toy_prompts(8),
        out_dir=tmp_path,
        reward_fn=target_fraction_reward,
    )
    stats = result.metrics[0]
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["approxkl"] == pytest.approx(0.0, abs=1e-9)
    assert stats["clipfrac"] == 0.0


def test_resume_continues_exactly(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    prompts = toy_prompts(12)
    straight = run_ppo(
        tiny_config(total_steps=4),
        policy_dir=toy_models[0],
        prompts=prompts,
        out_dir=tmp_path / "straight",
        reward_fn=target_fraction_reward,
    )
    run_ppo(
        tiny_config(total_steps=2),
        policy_dir=toy_models[0],
        prompts=prompts,
        out_dir=tmp_path / "resumed",
        reward_fn=target_fraction_reward,
    )
    resumed = run_ppo(
        tiny_config(total_steps=4),
        policy_dir=toy_models[0],
        prompts=prompts,
        out_dir=tmp_path / "resumed",
        reward_fn=target_fraction_reward,
        resume=True,
    )
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4]
    a = tmp_path / "straight" / "checkpoints" / "step-000004"
    b = tmp_path / "resumed" / "checkpoints" / "step-000004"
    opt_b = torch.load(b / "optimizer.pt")
    # 4 PPO steps x 2 epochs x 2 mini-batches = 16 Adam steps, whether or not the run was interrupted
    assert {float(s["step"]) for s in opt_b["state"].values()} == {16.0}
    # Same prompts and samples: steps 1-3 roll out from bitwise-identical weights (step 3 from the restored
    # checkpoint), so their scores are equal exactly.
    assert [m["score"] for m in resumed.metrics[:3]] == [m["score"] for m in straight.metrics[:3]]
    # The updates after the restart agree to float noise only: MKL's sgemm results depend on memory
    # alignment, which differs in a process that took a different allocation path.
    state_a, state_b = torch.load(a / "trainable.pt"), torch.load(b / "trainable.pt")
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.allclose(state_a[name], state_b[name], atol=1e-4, rtol=1e-3), name


def test_resume_without_checkpoint_is_a_clear_error(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_ppo(
            tiny_config(),
            policy_dir=toy_models[0],
            prompts=toy_prompts(4),
            out_dir=tmp_path,
            reward_fn=target_fraction_reward,
            resume=True,
        )


def test_reward_model_path_and_adapter_source(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    result = run_ppo(
        tiny_config(total_steps=1, checkpoint_every=0, bf16=True),
        policy_dir=toy_models[0],
        reward_dir=toy_models[1],
        prompts=toy_prompts(8),
        out_dir=tmp_path,
    )
    assert result.summary["value_head_from_reward_model"] is True
    assert math.isfinite(result.metrics[0]["score"])
    with pytest.raises(NotImplementedError, match="reward_source"):
        run_ppo(
            tiny_config(reward_source="adapter"),
            policy_dir=toy_models[0],
            reward_dir=toy_models[1],
            prompts=toy_prompts(8),
            out_dir=tmp_path / "x",
        )


def test_gradient_checkpointing_and_grad_accum_give_the_same_update(
    toy_models: tuple[Path, Path], tmp_path: Path
) -> None:
    """Checkpointing (one backward per adapter): same losses and gradients as the plain path.

    With grad_accum=2 each micro-batch averages over its own tokens, so it is only checked to run.
    """
    stats = []
    runs = (("plain", {}), ("ckpt", {"gradient_checkpointing": True}), ("accum", {"grad_accum": 2}))
    for name, extra in runs:
        result = run_ppo(
            tiny_config(total_steps=1, checkpoint_every=0, **extra),
            policy_dir=toy_models[0],
            prompts=toy_prompts(8),
            out_dir=tmp_path / name,
            reward_fn=target_fraction_reward,
        )
        stats.append(result.metrics[0])
    plain, ckpt, accum = stats
    assert plain["score"] == ckpt["score"] == accum["score"]  # identical rollout
    assert math.isfinite(accum["policy_loss"]) and accum["grad_norm"] > 0
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-3)
    assert ckpt["value_loss"] == pytest.approx(plain["value_loss"], rel=1e-3, abs=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bitsandbytes nf4)")
def test_four_bit_base_on_cuda(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    cfg = tiny_config(total_steps=1, checkpoint_every=0, load_in_4bit=True, bf16=True)
    result = run_ppo(
        cfg,
        policy_dir=toy_models[0],
        prompts=toy_prompts(8),
        out_dir=tmp_path,
        reward_fn=target_fraction_reward,
    )
    assert math.isfinite(result.metrics[0]["policy_loss"])
    assert result.summary["reference_logits_max_abs_change"] == 0.0


def test_step_times_average_over_the_steps_that_have_them() -> None:
    from training.ppo.trainer import mean_of

    rows = [
        {"seconds_per_step": 4.0},
        {"seconds_per_step": 2.0, "rollout_seconds": 1.5},
    ]  # resumed from older steps
    assert mean_of(rows, "seconds_per_step") == 3.0 and mean_of(rows, "rollout_seconds") == 1.5
    assert mean_of(rows, "update_seconds") is None


def test_the_first_micro_batch_forward_is_not_run_twice(
    toy_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One micro-batch per step (batch = mini-batch): the policy runs once, with gradients, and that forward gives
    the old log-probs too; a second, no-gradient policy forward over the same rows would be wasted work."""
    from training.ppo.actor_critic import ActorCritic

    calls: list[bool] = []
    original = ActorCritic.policy_logits

    def counting(self: ActorCritic, *args: object) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return original(self, *args)

    monkeypatch.setattr(ActorCritic, "policy_logits", counting)
    cfg = tiny_config(
        total_steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1, checkpoint_every=0, lr=0.0
    )
    result = run_ppo(
        cfg,
        policy_dir=toy_models[0],
        prompts=toy_prompts(8),
        out_dir=tmp_path,
        reward_fn=target_fraction_reward,
    )
    assert calls == [True]
    assert result.metrics[0]["ratio"] == pytest.approx(1.0, abs=1e-6)


def test_block_attention_trains_as_sdpa_does(
    toy_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PPO's left-padded batches through training/block_attention.py (its padding mask applied in the blocks, the
    rollout's prefill too): the same rollout, rewards and update as SDPA. fp32 here so they can be compared closely
    (`auto` uses the blocks in bf16 on a CPU without AMX)."""
    from training import block_attention

    monkeypatch.setattr(block_attention, "DTYPES", (torch.float32, torch.bfloat16))
    calls = []
    real = block_attention.block_causal_attention
    monkeypatch.setattr(
        block_attention,
        "block_causal_attention",
        lambda *args: calls.append(args[0].shape) or real(*args),
    )
    # prompts of different lengths: left padding in every batch
    prompts = [
        [{"role": "user", "content": f"Question {i}: " + "and what else " * (3 * i)}] for i in range(8)
    ]
    runs = {}
    for attention in ("sdpa", "blocks"):
        runs[attention] = run_ppo(
            # top_k 1: the same tokens whatever the last digit of a logit (sampling could flip one)
            tiny_config(total_steps=2, checkpoint_every=0, attention=attention, top_k=1),
            policy_dir=toy_models[0],
            prompts=prompts,
            out_dir=tmp_path / attention,
            reward_fn=target_fraction_reward,
        )
    assert runs["sdpa"].summary["attention"]["attention"] == "sdpa"
    assert runs["blocks"].summary["attention"]["attention"] == "causal_blocks"
    assert calls, "the blocks never ran"
    for a, b in zip(runs["sdpa"].metrics, runs["blocks"].metrics, strict=True):
        for key in ("score", "kl", "policy_loss", "value_loss", "response_length"):
            assert a[key] == pytest.approx(b[key], abs=1e-4, rel=1e-3), key
