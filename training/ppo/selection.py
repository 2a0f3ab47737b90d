"""Keep the best PPO policy seen on held-out prompts, not the last one.

RL fine-tuning can peak and then collapse (reward hacking, drift away from the reference), so the trainer scores
the policy on held-out prompts every `select_every` steps, and once before the first update (the starting
policy, whose KL to the reference is 0). A scored policy is eligible when its mean KL to the reference stays
under `select_kl_limit` nats per answer and its mean answer length under `select_max_length_ratio` times the
starting policy's; the eligible one with the highest mean held-out reward wins (the earlier on a tie). If no
update beats the start, the start is kept: the stage then hands on the policy it was given, and says so.

The record travels inside every PPO checkpoint (`selection.pt`), so a resumed run selects exactly as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SELECTION_FILE = "selection.pt"


@dataclass(frozen=True)
class HeldoutScore:
    """The policy at `step` on the held-out prompts: mean reward-model score, KL to the reference (nats per
    answer) and answer length (tokens)."""

    step: int
    reward: float
    kl: float
    length: float


class PolicySelector:
    """Scores offered during training; holds a copy of the best eligible policy's trainable tensors."""

    def __init__(self, kl_limit: float, max_length_ratio: float) -> None:
        self.kl_limit = kl_limit
        self.max_length_ratio = max_length_ratio
        self.scores: list[HeldoutScore] = []
        self.best: HeldoutScore | None = None
        self.best_state: dict[str, Tensor] | None = None

    def eligible(self, score: HeldoutScore) -> bool:
        if score.kl > self.kl_limit:
            return False
        start = self.scores[0].length if self.scores else score.length
        return score.length <= self.max_length_ratio * max(start, 1.0)

    def offer(self, score: HeldoutScore, state: dict[str, Tensor]) -> bool:
        """Record `score`; keep `state` (already a detached copy) when it is the new best. True when it is."""
        self.scores.append(score)
        if not self.eligible(score) or (self.best is not None and score.reward <= self.best.reward):
            return False
        self.best, self.best_state = score, state
        return True

    def summary(self) -> dict[str, Any]:
        last = self.scores[-1] if self.scores else None
        return {
            "selection_heldout": [asdict(s) for s in self.scores],
            "selected_step": self.best.step if self.best else None,
            "selected_heldout_reward": self.best.reward if self.best else None,
            "selected_heldout_kl": self.best.kl if self.best else None,
            "last_heldout_reward": last.reward if last else None,
            "last_heldout_kl": last.kl if last else None,
            "selection_kept_start": bool(self.best and self.best.step == 0),
        }

    # -- checkpoints --------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        torch.save(
            {
                "scores": [asdict(s) for s in self.scores],
                "best_step": self.best.step if self.best else -1,
                "best_state": self.best_state or {},
            },
            path / SELECTION_FILE,
        )

    def restore(self, path: Path, device: Any = "cpu") -> bool:
        """Load the record saved with a checkpoint folder; False when the checkpoint has none."""
        file = path / SELECTION_FILE
        if not file.is_file():
            return False
        saved = torch.load(file, map_location=device, weights_only=True)
        self.scores = [HeldoutScore(**s) for s in saved["scores"]]
        self.best = next((s for s in self.scores if s.step == saved["best_step"]), None)
        self.best_state = saved["best_state"] or None
        return True
