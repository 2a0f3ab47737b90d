"""Config: dataclass schema, YAML values, --set overrides, unknown keys named, resolved config written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import (
    DEFAULT_CONFIG,
    ConfigError,
    config_from_dict,
    config_sha256,
    load_config,
    parse_overrides,
    save_config,
)

TINY = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny.yaml"


def test_presets_load_with_documented_defaults() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.targets) == (16, 32, ["all-linear"])
    assert cfg.model.bf16 == "auto" and cfg.algorithm == "ppo"
    assert cfg.reward.max_length is None  # sized from the data (RewardTrainer drops longer pairs)
    tiny = load_config(TINY)
    assert tiny.sft.max_steps == 2 and tiny.ppo_config().total_steps == 2
    assert tiny.ppo_config().max_prompt_tokens == 1024  # the `ppo` overrides apply on top of the preset


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  lr: 1.0e-4\n  learnig_rate: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'sft.learnig_rate'"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"'gate.max_kll'"):
        load_config(TINY, ["gate.max_kll=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'colour'"):
        load_config(TINY, ["colour=blue"])
    with pytest.raises(ConfigError, match=r"unknown PPO config key 'ppo.total_stepz'"):
        load_config(TINY, ["ppo.total_stepz=3"])


def test_overrides_are_typed_and_nested() -> None:
    assert parse_overrides(["sft.lr=1e-4", "gate.qa_file=null", "lora.targets=q_proj,v_proj"]) == {
        "sft": {"lr": "1e-4"},  # YAML 1.1 scalar; the schema turns it into a float
        "gate": {"qa_file": None},
        "lora": {"targets": "q_proj,v_proj"},
    }
    assert load_config(TINY, ["sft.lr=1e-4"]).sft.lr == 1e-4
    cfg = load_config(
        TINY, ["sft.lr=0.5", "ppo.total_steps=3", "lora.targets=q_proj,v_proj", "algorithm=dpo"]
    )
    assert cfg.sft.lr == 0.5 and cfg.ppo_config().total_steps == 3
    assert cfg.lora.targets == ["q_proj", "v_proj"] and cfg.algorithm == "dpo"
    with pytest.raises(ConfigError, match=r"sft.batch_size must be an integer, got 'two'"):
        load_config(TINY, ["sft.batch_size=two"])
    with pytest.raises(ConfigError, match=r"algorithm must be 'ppo', 'dpo' or 'kto'"):
        load_config(TINY, ["algorithm=grpo"])
    assert load_config(TINY, ["algorithm=kto", "kto.beta=0.2"]).kto.beta == 0.2
    with pytest.raises(ConfigError, match=r"kto.batch_size must be >= 2"):
        load_config(TINY, ["kto.batch_size=1"])
    with pytest.raises(ConfigError, match=r"must look like"):
        load_config(TINY, ["sft.lr"])


def test_resolved_config_is_written_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["sft.lr=0.25"])
    digest = save_config(cfg, tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml.sha256").read_text().strip() == digest == config_sha256(cfg)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["sft"]["lr"] == 0.25 and written["ppo"]["max_prompt_tokens"] == 1024
    again = config_from_dict(written)
    assert again == cfg and config_sha256(again) == digest
    assert config_sha256(load_config(TINY, ["sft.lr=0.5"])) != digest


def test_publish_gguf_off_unquoted_means_off(tmp_path: Path) -> None:
    """`--set publish.gguf=off` and an unquoted `off` in YAML (read as false) both mean "off"."""
    assert load_config(DEFAULT_CONFIG, ["publish.gguf=off"]).publish.gguf == "off"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("publish:\n  gguf: off\n")
    assert load_config(cfg_file).publish.gguf == "off"
    with pytest.raises(ConfigError, match="publish.gguf must be one of"):
        load_config(DEFAULT_CONFIG, ["publish.gguf=q4_k"])


@pytest.mark.parametrize(
    ("precision", "device", "sft", "reward"),
    [
        ("true", "cpu", (4, 2), (2, 4)),  # bf16 on a CPU: the bf16_cpu_micro_batch, same optimizer batch
        ("false", "cpu", (2, 4), (1, 8)),  # fp32 (a CPU without native bf16): the memory-bound defaults
        ("true", "cuda", (2, 4), (1, 8)),  # unmeasured on a GPU: as configured
    ],
)
def test_the_micro_batch_follows_the_compute_dtype_and_keeps_the_optimizer_batch(
    precision: str, device: str, sft: tuple[int, int], reward: tuple[int, int], tmp_path: Path
) -> None:
    from training.config import trainer_kwargs

    cfg = load_config(DEFAULT_CONFIG, [f"model.bf16={precision}"])
    for section, want in ((cfg.sft, sft), (cfg.reward, reward)):
        kwargs = trainer_kwargs(section, cfg, device, tmp_path)
        got = (kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"])
        assert got == want and got[0] * got[1] == section.batch_size * section.grad_accum
        assert kwargs["bf16"] is (precision == "true")


def test_a_batch_the_bf16_micro_batch_does_not_divide_is_kept() -> None:
    from training.config import micro_batches

    cfg = load_config(DEFAULT_CONFIG, ["sft.batch_size=3", "sft.grad_accum=1"])
    assert micro_batches(cfg.sft, bf16_cpu=True) == (3, 1)  # 4 does not divide 3
    cfg = load_config(DEFAULT_CONFIG, ["sft.batch_size=1", "sft.grad_accum=2"])
    assert micro_batches(cfg.sft, bf16_cpu=True) == (1, 2)  # 4 exceeds the optimizer batch of 2
    cfg = load_config(DEFAULT_CONFIG, ["sft.bf16_cpu_micro_batch=null"])
    assert micro_batches(cfg.sft, bf16_cpu=True) == (2, 4)
