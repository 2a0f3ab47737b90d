"""PPO hyper-parameters: the dataclass is the schema, YAML gives values, `--set key=value` overrides.

Unknown keys are an error (a typo must not silently fall back to a default). Every run writes the
resolved config next to its outputs (`out_dir/ppo_config.yaml`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.hardware import DtypeChoice, PrecisionError, choose_dtype, parse_precision


class PPOConfigError(ValueError):
    """A PPO config file or override is invalid; the message says which key and what to change."""


@dataclass
class PPOConfig:
    """Everything one PPO run needs besides the models and prompts.

    Batch vocabulary (per process; with N processes the global batch is N times larger):
    `batch_size` prompts are rolled out per PPO step; each of the `ppo_epochs` epochs shuffles them into
    mini-batches of `mini_batch_size` sequences, one optimizer step each; a mini-batch is split into
    `grad_accum` micro-batches whose gradients are accumulated (memory knob, same maths).
    """

    # --- where things are (used by `python -m training.ppo`; run_ppo() takes explicit arguments) ---
    policy_dir: str | None = None  # causal LM folder (the SFT-merged model)
    reward_dir: str | None = None  # AutoModelForSequenceClassification folder (reward_source: separate)
    prompts_file: str | None = None  # prompts.jsonl from the feedback export: {"prompt": [messages], ...}
    out_dir: str | None = None

    # --- loop size ---
    total_steps: int = 100  # PPO steps (rollout + update); each consumes batch_size prompts per process
    batch_size: int = 8
    mini_batch_size: int = 4
    grad_accum: int = 1
    ppo_epochs: int = 4
    seed: int = 0

    # --- optimisation ---
    # 3e-5: LoRA moves a low-rank slice and usually wants ~10x the full fine-tuning rate (1e-6..1e-5 for
    # full PPO), but PPO batches of user feedback are small and noisy; 3e-5 keeps the per-step policy
    # change (approx KL, clip fraction) small while still moving a zero-initialised LoRA B matrix.
    lr: float = 3e-5
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0

    # --- PPO objective ---
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    whiten_rewards: bool = False  # whiten the per-token rewards (masked) before GAE
    score_clip: float | None = None  # clip the reward-model score to [-score_clip, score_clip]
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of responses that never emit EOS

    # --- KL penalty against the reference (the base with adapters disabled) ---
    kl_coef: float = 0.05
    adaptive_kl: bool = False  # Ziegler et al. 2019 proportional controller
    kl_target: float = 6.0  # target of the summed per-sequence KL (nats)
    kl_horizon: int = 10000

    # --- rollout ---
    max_prompt_tokens: int = 1024  # longer prompts are skipped at load time (counted in the summary)
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    # --- models ---
    lora_r: int = 16
    lora_alpha: int = 32
    # 0.0: dropout makes the new/old log-prob ratio differ from 1 on the first epoch, which PPO would
    # read as policy change and clip.
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    reward_source: str = "separate"  # "separate" (own model folder) | "adapter" (not implemented yet)
    init_value_head_from_reward: bool = True  # copy the RM score head into the value head when shapes match
    # frozen base (and RM) weights in bf16: "auto" = only with native bf16 (model_store.hardware.choose_dtype;
    # AMX made batched forwards ~3.6x faster, emulated bf16 is ~10x slower) | true | false
    bf16: str = "auto"
    load_in_4bit: bool = False  # nf4 base via bitsandbytes; CUDA only
    gradient_checkpointing: bool = False

    # --- bookkeeping ---
    checkpoint_every: int = 50  # also at the end; 0 = only at the end
    keep_checkpoints: int = 2
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        """Raise PPOConfigError on values that would fail later or silently do the wrong thing."""
        positive = [
            "total_steps",
            "batch_size",
            "mini_batch_size",
            "grad_accum",
            "ppo_epochs",
            "max_new_tokens",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise PPOConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.batch_size % self.mini_batch_size:
            raise PPOConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})"
            )
        if self.mini_batch_size % self.grad_accum:
            raise PPOConfigError(
                f"mini_batch_size ({self.mini_batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )
        if self.temperature <= 0:
            raise PPOConfigError("temperature must be > 0 (PPO needs sampled rollouts)")
        if not 0 < self.top_p <= 1:
            raise PPOConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        try:
            self.bf16 = parse_precision(self.bf16)
        except PrecisionError as e:
            raise PPOConfigError(f"bf16: {e}") from e
        if self.reward_source not in ("separate", "adapter"):
            raise PPOConfigError(f"reward_source must be 'separate' or 'adapter', got {self.reward_source!r}")
        if self.kl_coef < 0:
            raise PPOConfigError("kl_coef must be >= 0")
        if self.checkpoint_every < 0:
            raise PPOConfigError("checkpoint_every must be >= 0 (0 = only at the end)")

    def compute_dtype(self, device: str) -> DtypeChoice:
        """Precision of the frozen base and the reward model on `device` ("cpu" | "cuda"), rollouts included."""
        return choose_dtype(self.bf16, device=device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, raw: Any, current: Any, annotation: str) -> Any:
    """Turn a YAML/CLI value into the field's type; strings from `--set` are parsed as YAML scalars."""
    import yaml

    value = yaml.safe_load(raw) if isinstance(raw, str) and "str" not in annotation.split("|")[0] else raw
    if value is None:
        if "None" in annotation:
            return None
        raise PPOConfigError(f"{name} may not be null")
    if "list" in annotation:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise PPOConfigError(f"{name} must be a list, got {value!r}")
        return [str(v) for v in value]
    base = annotation.split("|")[0].strip()
    try:
        if base == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base == "int":
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError) as exc:
        raise PPOConfigError(f"{name} must be {base}, got {value!r}") from exc
    return value if current is None else type(current)(value)


def config_from_dict(values: dict[str, Any], base: PPOConfig | None = None) -> PPOConfig:
    """Apply `values` onto `base` (default: the dataclass defaults); unknown keys raise PPOConfigError."""
    cfg = dataclasses.replace(base) if base is not None else PPOConfig()
    fields = {f.name: f for f in dataclasses.fields(PPOConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PPOConfigError(f"unknown PPO config key(s) {unknown}; valid keys: {sorted(fields)}")
    for name, raw in values.items():
        annotation = str(fields[name].type)
        setattr(cfg, name, _coerce(name, raw, getattr(cfg, name), annotation))
    cfg.validate()
    return cfg


def load_ppo_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PPOConfig:
    """Read a YAML file (optional) and `key=value` overrides into a validated PPOConfig."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PPOConfigError(f"PPO config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise PPOConfigError(
                f"{path} must hold a mapping of PPO config keys, got {type(loaded).__name__}"
            )
        values.update(loaded)
    cfg = config_from_dict(values)
    extra: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise PPOConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        extra[key.strip()] = raw
    return config_from_dict(extra, cfg) if extra else cfg


def save_ppo_config(cfg: PPOConfig, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
