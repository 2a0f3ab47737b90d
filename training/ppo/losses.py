"""PPO losses and token statistics as pure functions; each loss returns `(loss, stats)`.

Shapes: B = sequences in the (micro-)batch, R = response length, V = vocabulary size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from training.ppo.advantages import masked_mean


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each chosen token, computed in fp32. logits: [B, R, V], tokens: [B, R] -> [B, R]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position, in nats. logits: [B, R, V] -> [B, R]."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective (Schulman et al. 2017), as a loss to minimise.

    loss = mean_masked( max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) ), r = exp(logprobs - old_logprobs).
    logprobs (with grad), old_logprobs, advantages, mask: [B, R].
    stats: clipfrac (share of tokens where the clipped term won), approxkl (0.5 * mean (log r)^2), ratio.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: 0.5 * mean_masked( max((V - G)^2, (V_clip - G)^2) ), V_clip = V_old + clip(V - V_old).

    values (with grad), old_values, returns, mask: [B, R]. stats: vf_clipfrac.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return loss, stats
