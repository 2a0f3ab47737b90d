"""Our PPO: one frozen base, LoRA policy + critic adapters, adapter-off reference (see trainer.py).

`from training.ppo import PPOConfig, load_ppo_config, run_ppo`. Importing this package does not import torch;
`run_ppo` / `PPOResult` load the trainer on first use.
"""

from __future__ import annotations

from typing import Any

from training.ppo.config import PPOConfig, PPOConfigError, config_from_dict, load_ppo_config

__all__ = ["PPOConfig", "PPOConfigError", "PPOResult", "config_from_dict", "load_ppo_config", "run_ppo"]


def __getattr__(name: str) -> Any:
    if name in ("run_ppo", "PPOResult"):
        from training.ppo import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'training.ppo' has no attribute {name!r}")
