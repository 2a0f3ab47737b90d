"""Tiny PPO fixtures: a char-level tokenizer, a random 2-layer Llama policy and a random Llama reward model."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.ppo.toy import build_toy_models


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(policy_dir, reward_dir), built once per session; nothing is downloaded."""
    return build_toy_models(tmp_path_factory.mktemp("ppo_toy_models"))
