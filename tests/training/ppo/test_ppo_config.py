"""PPOConfig: YAML + overrides, unknown keys and bad values are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.ppo.config import PPOConfig, PPOConfigError, load_ppo_config

CONFIGS = Path(__file__).resolve().parents[3] / "training" / "configs"


def test_shipped_configs_load() -> None:
    cfg = load_ppo_config(CONFIGS / "ppo.yaml")
    assert cfg.kl_coef == 0.05 and cfg.cliprange == 0.2 and cfg.lr == 3e-5
    tiny = load_ppo_config(CONFIGS / "ppo_tiny.yaml")
    assert tiny.max_new_tokens == 16


def test_defaults_match_the_documented_values() -> None:
    cfg = PPOConfig()
    assert (cfg.kl_coef, cfg.adaptive_kl, cfg.kl_target, cfg.kl_horizon) == (0.05, False, 6.0, 10000)
    assert (cfg.cliprange, cfg.cliprange_value, cfg.vf_coef, cfg.gamma, cfg.lam) == (0.2, 0.2, 0.1, 1.0, 0.95)
    assert (cfg.ppo_epochs, cfg.max_grad_norm, cfg.temperature) == (4, 1.0, 0.7)


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_ppo_config(
        CONFIGS / "ppo_tiny.yaml",
        ["lr=1e-4", "adaptive_kl=true", "score_clip=null", "lora_targets=q_proj,v_proj", "out_dir=/tmp/x"],
    )
    assert cfg.lr == 1e-4 and cfg.adaptive_kl is True and cfg.score_clip is None
    assert cfg.lora_targets == ["q_proj", "v_proj"] and cfg.out_dir == "/tmp/x"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lrr=1"], "unknown PPO config key"),
        (["batch_size=abc"], "batch_size must be an integer"),
        (["batch_size=6", "mini_batch_size=4"], "multiple of mini_batch_size"),
        (["mini_batch_size=2", "grad_accum=4"], "multiple of grad_accum"),
        (["temperature=0"], "temperature"),
        (["reward_source=elsewhere"], "reward_source"),
        (["oops"], "key=value"),
    ],
)
def test_bad_values_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(PPOConfigError, match=message):
        load_ppo_config(CONFIGS / "ppo_tiny.yaml", overrides)


def test_unknown_key_in_yaml_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kl_coef: 0.1\nklcoef: 0.2\n")
    with pytest.raises(PPOConfigError, match="klcoef"):
        load_ppo_config(path)


def test_cli_reports_bad_config_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from training.ppo.__main__ import main

    assert main(["--config", str(CONFIGS / "ppo_tiny.yaml"), "--set", "lrr=1"]) == 1
    assert "unknown PPO config key" in capsys.readouterr().err
    assert main(["--config", str(CONFIGS / "ppo_tiny.yaml")]) == 1  # the tiny config names no paths
    assert "policy_dir" in capsys.readouterr().err


def test_cli_reports_a_missing_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.ppo.__main__ import main

    paths = [f"{k}={tmp_path / k}" for k in ("policy_dir", "reward_dir", "prompts_file", "out_dir")]
    args = ["--config", str(CONFIGS / "ppo_tiny.yaml")]
    for item in paths:
        args += ["--set", item]
    assert main(args) == 1
    assert "does not exist" in capsys.readouterr().err
