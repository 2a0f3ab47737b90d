"""Config values that would break the product stop at load time with one line naming the key (issue #16).

Through the real `ragqa` command (a subprocess, as a user runs it) and through the one config loader
(settings/loader.py) for each schema: the app's config.yaml, the retrain config and its PPO section.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.config import AppConfig
from settings.loader import ConfigError, bounds, load
from settings.paths import Paths
from training.config import load_config
from training.ppo.config import load_ppo_config

ROOT = Path(__file__).resolve().parents[2]


def ragqa(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAGQA_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "app", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("max_file_mb: -5\n", "max_file_mb must be > 0, got -5"),  # would skip every file: an empty index
        ("concurrency: 0\n", "concurrency must be >= 1, got 0"),  # would hang every request
        ("k: many\n", "k must be an integer, got 'many'"),
        ("top_p: 1.5\n", "top_p must be within (0, 1], got 1.5"),
    ],
)
def test_ragqa_refuses_a_bad_config_yaml_in_one_line(tmp_path: Path, yaml_text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(yaml_text)
    done = ragqa(tmp_path, "ask", "What is in the index?")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "config.yaml" in done.stderr  # the file to fix is named


def test_ragqa_retrain_refuses_a_bad_override_in_one_line(tmp_path: Path) -> None:
    done = ragqa(tmp_path, "retrain", "--dry-run", "--set", "gate.num_prompts=0")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "gate.num_prompts must be > 0, got 0" in done.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_file_mb": 0}, "max_file_mb must be > 0"),
        ({"max_queue": -1}, "max_queue must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"generation_timeout_s": 0}, "generation_timeout_s must be > 0"),
        ({"temperature": -0.1}, "temperature must be > 0"),
        ({"rate_limit_per_minute": -1}, "rate_limit_per_minute must be >= 0"),
        ({"port": 70000}, "port must be within [0, 65535]"),
        ({"num_candidates": 9}, "num_candidates must be within [2, 4]"),
        ({"concurrency": "two"}, "concurrency must be an integer"),
        ({"concurrency": True}, "concurrency must be an integer"),  # YAML `yes` is no number
        ({"demo_corpus": "yes please"}, "demo_corpus must be true or false"),
        ({"backend": "vllm"}, "backend must be one of"),
        ({"host": ["a"]}, "host must be a string"),
    ],
)
def test_app_config_ranges_and_types(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AppConfig.load(Paths(tmp_path), **values)


def test_yaml_booleans_stay_booleans(tmp_path: Path) -> None:
    """`gguf: off` is YAML false and means "off"; elsewhere a boolean is not silently the string "false"."""
    (tmp_path / "config.yaml").write_text("gguf: off\nload_in_4bit: no\n")
    cfg = AppConfig.load(Paths(tmp_path))
    assert cfg.gguf == "off" and cfg.load_in_4bit is False
    (tmp_path / "config.yaml").write_text("base_model: false\n")
    with pytest.raises(ConfigError, match="base_model must be a string, got False"):
        AppConfig.load(Paths(tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.test_fraction=1.5", "data.test_fraction must be within [0, 1)"),
        ("sft.batch_size=0", "sft.batch_size must be > 0"),
        ("sft.lr=-1e-4", "sft.lr must be >= 0"),
        ("lora.dropout=1", "lora.dropout must be within [0, 1)"),
        ("gate.max_kl=-1", "gate.max_kl must be >= 0"),
        ("ppo.gamma=1.5", "ppo.gamma must be within [0, 1]"),
        ("ppo.top_p=0", "ppo.top_p must be within (0, 1]"),
        ("ppo.kl_coef=-0.1", "ppo.kl_coef must be >= 0"),
        ("model.load_in_4bit=maybe", "model.load_in_4bit must be 'auto', 'true' or 'false'"),
    ],
)
def test_retrain_config_ranges(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_ppo_section_is_resolved_once_and_validated_standalone() -> None:
    cfg = load_config(None, ["ppo.total_steps=3"])
    assert cfg.ppo.total_steps == 3 and cfg.ppo_config() is cfg.ppo  # one object, not re-resolved per call
    with pytest.raises(ConfigError, match="lam must be within"):
        load_ppo_config(None, ["lam=-0.5"])


def test_ranges_are_declared_on_the_fields() -> None:
    @dataclass
    class Schema:
        n: int = field(default=1, metadata=bounds(ge=1, le=3))
        name: str = field(default="a", metadata=bounds(choices=("a", "b")))

    assert load(Schema, overrides=["n=3", "name=b"]) == Schema(3, "b")
    with pytest.raises(ConfigError, match=r"^n must be within \[1, 3\], got 4$"):
        load(Schema, values={"n": 4})
    with pytest.raises(ConfigError, match=r"^name must be 'a' or 'b', got 'c'$"):
        load(Schema, values={"name": "c"})
    with pytest.raises(ConfigError, match=r"^unknown config key 'x'"):
        load(Schema, values={"x": 1})
