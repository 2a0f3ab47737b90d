"""The PPO maths on hand-computed tensors (numbers worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from training.ppo.advantages import (
    AdaptiveKLController,
    FixedKLController,
    compute_rewards,
    explained_variance,
    gae_advantages,
    last_valid_index,
    masked_mean,
    masked_var,
    masked_whiten,
)
from training.ppo.losses import entropy_from_logits, logprobs_from_logits, policy_loss, value_loss
from training.ppo.rollout import left_pad, response_mask_from_eos

T = torch.tensor


def test_masked_mean_and_var_ignore_masked_positions() -> None:
    values = T([[1.0, 2.0, 3.0, 100.0], [5.0, 50.0, -7.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # kept: 1, 2, 3, 5 -> mean 2.75; squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75
    assert masked_mean(values, mask).item() == pytest.approx(2.75)
    assert masked_var(values, mask).item() == pytest.approx(8.75 / 3)
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(8.75 / 4)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])


def test_masked_whiten_uses_masked_statistics_and_zeroes_padding() -> None:
    values = T([[1.0, 2.0, 3.0, 100.0], [5.0, 50.0, -7.0, 0.0]])
    mask = T([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    std = math.sqrt(8.75 / 3)
    expected = [[(1 - 2.75) / std, (2 - 2.75) / std, (3 - 2.75) / std, 0.0], [(5 - 2.75) / std, 0, 0, 0]]
    assert masked_whiten(values, mask).tolist()[0] == pytest.approx(expected[0], abs=1e-5)
    assert masked_whiten(values, mask).tolist()[1] == pytest.approx(expected[1], abs=1e-5)
    kept = masked_whiten(values, mask)[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    # shift_mean=False keeps the mean: scaled values + 2.75
    no_shift = masked_whiten(values, mask, shift_mean=False)
    assert no_shift[0, 0].item() == pytest.approx((1 - 2.75) / std + 2.75, abs=1e-5)
    assert no_shift[0, 3].item() == 0.0


def test_compute_rewards_puts_score_on_last_valid_token() -> None:
    score = T([2.0, -1.0, 0.5])
    logprobs = T([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0], [-1.0, -4.0, -4.0]])
    ref = T([[-1.5, -1.0, -3.0], [-1.0, -0.25, -2.0], [-2.0, -1.0, -1.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards, kl, non_score = compute_rewards(score, logprobs, ref, mask, kl_coef=0.1)
    # row 0: kl = [0.5, -1, 0] -> -0.1 * kl = [-0.05, 0.1, 0]; score 2 on index 2
    # row 1: kl = [0.5, -0.25, (masked)] -> [-0.05, 0.025]; score -1 on index 1 -> -0.975
    # row 2: kl = [1, masked, masked] -> [-0.1]; score 0.5 on index 0 -> 0.4
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.1, 2.0])
    assert rewards.tolist()[1] == pytest.approx([-0.05, -0.975, 0.0])
    assert rewards.tolist()[2] == pytest.approx([0.4, 0.0, 0.0])
    assert kl.tolist()[1] == pytest.approx([0.5, -0.25, 0.0])
    assert non_score.sum(dim=1).tolist() == pytest.approx([0.05, -0.025, -0.1])
    assert last_valid_index(mask).tolist() == [2, 1, 0]


def test_gae_matches_hand_computation() -> None:
    gamma, lam = 0.9, 0.5
    rewards = T([[0.0, 0.0, 1.0], [0.5, 2.0, 9.0]])  # 9.0 sits on padding and must be ignored
    values = T([[0.5, 0.4, 0.3], [1.0, 0.5, 7.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)
    # row 0: d2 = 1 - 0.3 = 0.7 -> A2 = 0.7
    #        d1 = 0 + 0.9 * 0.3 - 0.4 = -0.13 -> A1 = -0.13 + 0.45 * 0.7 = 0.185
    #        d0 = 0 + 0.9 * 0.4 - 0.5 = -0.14 -> A0 = -0.14 + 0.45 * 0.185 = -0.05675
    # row 1: index 1 is terminal: d1 = 2 - 0.5 = 1.5 -> A1 = 1.5
    #        d0 = 0.5 + 0.9 * 0.5 - 1.0 = -0.05 -> A0 = -0.05 + 0.45 * 1.5 = 0.625
    assert advantages.tolist()[0] == pytest.approx([-0.05675, 0.185, 0.7])
    assert advantages.tolist()[1] == pytest.approx([0.625, 1.5, 0.0])
    assert returns.tolist()[0] == pytest.approx([0.44325, 0.585, 1.0])
    assert returns.tolist()[1] == pytest.approx([1.625, 2.0, 0.0])


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value() -> None:
    rewards = T([[1.0, 2.0, 3.0]])
    values = T([[0.5, 0.25, 0.125]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert returns.tolist()[0] == pytest.approx([6.0, 5.0, 3.0])
    assert advantages.tolist()[0] == pytest.approx([5.5, 4.75, 2.875])


def _policy_case(ratios: list[float], advantage: float) -> tuple[torch.Tensor, dict]:
    logprobs = torch.log(T(ratios)).unsqueeze(0)
    old = torch.zeros_like(logprobs)
    adv = torch.full_like(logprobs, advantage)
    return policy_loss(logprobs, old, adv, torch.ones_like(logprobs), cliprange=0.2)


def test_policy_loss_clips_beyond_the_edges() -> None:
    # A = +1: per-token max(-r, -clip(r, 0.8, 1.2))
    #   r = 1.0 -> -1.0; 1.2 (edge) -> -1.2; 1.5 -> -1.2 (clipped); 0.8 (edge) -> -0.8; 0.5 -> -0.5 (not clipped)
    loss, _ = _policy_case([1.0, 1.2, 1.5, 0.8, 0.5], advantage=1.0)
    assert loss.item() == pytest.approx((-1.0 - 1.2 - 1.2 - 0.8 - 0.5) / 5, abs=1e-6)
    # A = -1: per-token max(r, clip(r)) -> 1.0, 1.2, 1.5 (not clipped), 0.8, 0.8 (clipped)
    loss, _ = _policy_case([1.0, 1.2, 1.5, 0.8, 0.5], advantage=-1.0)
    assert loss.item() == pytest.approx((1.0 + 1.2 + 1.5 + 0.8 + 0.8) / 5, abs=1e-6)
    # clip fractions away from the exact edges: A>0 clips only r > 1.2, A<0 only r < 0.8
    _, stats = _policy_case([1.0, 1.5, 0.5, 1.1], advantage=1.0)
    assert stats["clipfrac"].item() == pytest.approx(0.25)
    _, stats = _policy_case([1.0, 1.5, 0.5, 0.3], advantage=-1.0)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_policy_loss_has_no_gradient_where_clipped() -> None:
    ratios = T([1.5, 0.5, 1.1])  # A>0: 1.5 clipped (no grad); 0.5 and 1.1 inside the objective
    logprobs = torch.log(ratios).unsqueeze(0).requires_grad_(True)
    loss, _ = policy_loss(logprobs, torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3), 0.2)
    loss.backward()
    grad = logprobs.grad[0]
    assert grad[0].item() == 0.0
    # d/dlogp of -A * exp(logp) / 3 = -r / 3
    assert grad[1].item() == pytest.approx(-0.5 / 3, abs=1e-6)
    assert grad[2].item() == pytest.approx(-1.1 / 3, abs=1e-6)


def test_policy_loss_ignores_masked_tokens() -> None:
    logprobs = torch.log(T([[1.0, 50.0]]))
    loss, stats = policy_loss(logprobs, torch.zeros(1, 2), torch.ones(1, 2), T([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.0)
    assert stats["approxkl"].item() == pytest.approx(0.0)


def test_value_loss_is_clipped_around_old_values() -> None:
    values = T([[0.5, 0.1, 1.5, -0.5, 9.0]])
    old = torch.zeros(1, 5)
    returns = T([[1.0, 1.0, 1.0, 1.0, 1.0]])
    mask = T([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # errors: 0.5 -> max(0.25, (0.2-1)^2=0.64) = 0.64 (clipped); 0.1 -> 0.81; 1.5 -> max(0.25, 0.64) = 0.64
    # (clipped); -0.5 -> max(2.25, 1.44) = 2.25; masked 9.0 ignored. loss = 0.5 * 4.34 / 4
    assert loss.item() == pytest.approx(0.5 * 4.34 / 4, abs=1e-6)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


def test_logprobs_and_entropy_from_logits() -> None:
    logits = torch.log(T([[[0.5, 0.25, 0.25], [1.0, 1e-30, 1e-30]]]))
    tokens = T([[1, 0]])
    assert logprobs_from_logits(logits, tokens).tolist()[0] == pytest.approx([math.log(0.25), 0.0], abs=1e-6)
    entropy = entropy_from_logits(logits)[0]
    assert entropy[0].item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)), abs=1e-6)
    assert entropy[1].item() == pytest.approx(0.0, abs=1e-6)


def test_explained_variance() -> None:
    returns = T([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)


def test_fixed_kl_controller_never_moves() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05


def test_adaptive_kl_controller_follows_ziegler() -> None:
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, 100)  # error clip(9/6 - 1) = +0.2 -> x (1 + 0.2 * 100 / 10000) = 1.002
    assert ctl.value == pytest.approx(0.1002)
    ctl.update(3.0, 1000)  # error clip(-0.5) = -0.2 -> x 0.98
    assert ctl.value == pytest.approx(0.1002 * 0.98)
    ctl.update(6.6, 500)  # error +0.1 -> x 1.005
    assert ctl.value == pytest.approx(0.1002 * 0.98 * 1.005)
    before = ctl.value
    ctl.update(float("nan"), 10)
    assert ctl.value == before


def test_response_mask_stops_after_first_eos() -> None:
    responses = T([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, ended = response_mask_from_eos(responses, eos_ids=[2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_left_pad() -> None:
    ids, mask = left_pad([[7, 8, 9], [4]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
