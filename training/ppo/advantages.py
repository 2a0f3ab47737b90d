"""Rewards, advantages and the KL controllers: small pure torch functions, unit-tested on hand numbers.

Shapes: B = sequences in the batch, R = response length (right-padded). `mask` is 1.0 on response
tokens up to and including the first EOS and 0.0 on padding after it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over positions where `mask` is 1 (all of them, or along `dim`).

    values, mask: [B, R] (any equal shapes). Returns a scalar, or [B] for dim=1.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `values` over masked positions (Bessel-corrected by default). values, mask: [B, R] -> scalar."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n <= 1:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        var = var * n / (n - 1)
    return var


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise to unit variance (and zero mean if shift_mean) using masked statistics only.

    values, mask: [B, R] -> [B, R]. Masked positions are set to 0 so they cannot leak into later sums.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of a right-padded mask. mask: [B, R] -> [B] (long); rows of all 0 give 0."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * (mask > 0)).amax(dim=1)


def compute_rewards(
    score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token reward: -kl_coef * (logprob - ref_logprob), plus the sequence score on the last valid token.

    score: [B]; logprobs, ref_logprobs, mask: [B, R].
    Returns (rewards [B, R], kl [B, R] (k1 estimate, masked), non_score_reward [B, R]); all 0 where mask is 0.
    """
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_valid_index(mask)] += score.to(rewards.dtype)
    return rewards * mask, kl, non_score


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded responses.

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t;   A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}.
    The state after the last valid token is terminal (its value counts as 0).
    rewards, values, mask: [B, R]. Returns (advantages [B, R], returns = advantages + values [B, R]),
    both 0 where mask is 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    length = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(length)):
        if t + 1 < length:
            next_value, next_mask = values[:, t + 1], mask[:, t + 1]
        else:
            next_value, next_mask = torch.zeros_like(last), torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        last = delta + gamma * lam * next_mask * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over masked tokens; 1 is a perfect critic, <=0 a useless one."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt; kept so the trainer can call every controller the same way."""


class AdaptiveKLController:
    """Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences", section 2.2.

    beta <- beta * (1 + K * e) with e = clip(KL / target - 1, -0.2, 0.2) and K = n_steps / horizon, where
    KL is the mean summed per-sequence KL of the last batch and n_steps the number of sequences in it.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
