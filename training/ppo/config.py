"""PPO hyper-parameters: the dataclass is the schema (ranges on the fields), read by the one config loader.

YAML gives values, `--set key=value` overrides (settings/loader.py); unknown keys are an error. Inside a retrain
this is the nested `ppo` section of TrainConfig, resolved once when the retrain config is loaded. Every run writes
the resolved config next to its outputs (`out_dir/ppo_config.yaml`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.hardware import DtypeChoice, choose_dtype, parse_precision
from settings.loader import ConfigError, apply, bounds, load

PPOConfigError = ConfigError  # one config error type for every schema (kept under its old name for callers)


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
    # PPO steps (rollout + update); each consumes batch_size prompts per process
    total_steps: int = field(default=100, metadata=bounds(gt=0))
    batch_size: int = field(default=8, metadata=bounds(gt=0))
    mini_batch_size: int = field(default=4, metadata=bounds(gt=0))
    grad_accum: int = field(default=1, metadata=bounds(gt=0))
    ppo_epochs: int = field(default=4, metadata=bounds(gt=0))
    seed: int = 0

    # --- optimisation ---
    # 3e-5: LoRA moves a low-rank slice and usually wants ~10x the full fine-tuning rate (1e-6..1e-5 for
    # full PPO), but PPO batches of user feedback are small and noisy; 3e-5 keeps the per-step policy
    # change (approx KL, clip fraction) small while still moving a zero-initialised LoRA B matrix.
    lr: float = field(default=3e-5, metadata=bounds(ge=0))  # 0 freezes the policy (a test checks ratio 1)
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    adam_eps: float = field(default=1e-8, metadata=bounds(gt=0))
    max_grad_norm: float = field(default=1.0, metadata=bounds(gt=0))

    # --- PPO objective ---
    cliprange: float = field(default=0.2, metadata=bounds(gt=0))
    cliprange_value: float = field(default=0.2, metadata=bounds(gt=0))
    vf_coef: float = field(default=0.1, metadata=bounds(ge=0))
    gamma: float = field(default=1.0, metadata=bounds(ge=0, le=1))
    lam: float = field(default=0.95, metadata=bounds(ge=0, le=1))
    whiten_advantages: bool = True
    whiten_rewards: bool = False  # whiten the per-token rewards (masked) before GAE
    # clip the reward-model score to [-score_clip, score_clip]
    score_clip: float | None = field(default=None, metadata=bounds(gt=0))
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of responses that never emit EOS

    # --- KL penalty against the reference (the base with adapters disabled) ---
    kl_coef: float = field(default=0.05, metadata=bounds(ge=0))
    adaptive_kl: bool = False  # Ziegler et al. 2019 proportional controller
    # target of the summed per-sequence KL (nats)
    kl_target: float = field(default=6.0, metadata=bounds(gt=0))
    kl_horizon: int = field(default=10000, metadata=bounds(gt=0))

    # --- rollout ---
    # longer prompts are skipped at load time (counted in the summary)
    max_prompt_tokens: int = field(default=1024, metadata=bounds(gt=0))
    max_new_tokens: int = field(default=128, metadata=bounds(gt=0))
    temperature: float = field(default=0.7, metadata=bounds(gt=0))
    top_k: int = field(default=0, metadata=bounds(ge=0))  # 0 = off
    top_p: float = field(default=1.0, metadata=bounds(gt=0, le=1))  # 1.0 = off

    # --- models ---
    lora_r: int = field(default=16, metadata=bounds(gt=0))
    lora_alpha: int = field(default=32, metadata=bounds(gt=0))
    # 0.0: dropout makes the new/old log-prob ratio differ from 1 on the first epoch, which PPO would
    # read as policy change and clip.
    lora_dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # "separate" (own model folder) | "adapter" (not implemented yet)
    reward_source: str = field(default="separate", metadata=bounds(choices=("separate", "adapter")))
    init_value_head_from_reward: bool = True  # copy the RM score head into the value head when shapes match
    # frozen base (and RM) weights in bf16: "auto" = only with native bf16 (model_store.hardware.choose_dtype;
    # AMX made batched forwards ~3.6x faster, emulated bf16 is ~10x slower) | true | false
    bf16: str = field(default="auto", metadata=bounds(parse=parse_precision))
    load_in_4bit: bool = False  # nf4 base via bitsandbytes; CUDA only
    gradient_checkpointing: bool = False
    # attention of the policy/critic/reference forwards and the rollout's prefill (training/block_attention.py):
    # "auto" = causal attention in query blocks on a CPU in bf16 without AMX, else SDPA | blocks | sdpa
    attention: str = field(default="auto", metadata=bounds(choices=("auto", "blocks", "sdpa")))

    # --- which policy the stage hands on (training/ppo/selection.py) ---
    # score the policy on held-out prompts every N steps (and before the first update); the best eligible one
    # is kept, not the last. 0 = keep the last policy (no held-out scoring)
    select_every: int = field(default=10, metadata=bounds(ge=0))
    select_prompts: int = field(default=16, metadata=bounds(gt=0))  # held-out prompts scored each time
    # eligible only with a mean KL to the reference (the SFT model) under this many nats per answer ...
    select_kl_limit: float = field(default=10.0, metadata=bounds(gt=0))
    # ... and mean answers at most this many times as long as the starting policy's
    select_max_length_ratio: float = field(default=1.5, metadata=bounds(gt=0))

    # --- bookkeeping ---
    checkpoint_every: int = field(default=50, metadata=bounds(ge=0))  # also at the end; 0 = only at the end
    keep_checkpoints: int = field(default=2, metadata=bounds(ge=0))
    plots: bool = True
    progress: bool = True

    def validate(self) -> None:
        """The rules between fields (single-field ranges are on the fields and checked by the loader)."""
        if self.batch_size % self.mini_batch_size:
            raise PPOConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of mini_batch_size ({self.mini_batch_size})"
            )
        if self.mini_batch_size % self.grad_accum:
            raise PPOConfigError(
                f"mini_batch_size ({self.mini_batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )

    def compute_dtype(self, device: str) -> DtypeChoice:
        """Precision of the frozen base and the reward model on `device` ("cpu" | "cuda"), rollouts included."""
        return choose_dtype(self.bf16, device=device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(values: dict[str, Any], base: PPOConfig | None = None) -> PPOConfig:
    """Apply `values` onto `base` (default: the dataclass defaults); unknown keys raise PPOConfigError."""
    cfg = apply(base if base is not None else PPOConfig(), values, what="PPO config")
    cfg.validate()
    return cfg


def load_ppo_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    values: dict[str, Any] | None = None,
) -> PPOConfig:
    """A YAML file (optional), then `values`, then `key=value` overrides, as one validated PPOConfig."""
    cfg = load(
        PPOConfig,
        file=Path(path) if path is not None else None,
        values=values,
        overrides=overrides or (),
        what="PPO config",
    )
    cfg.validate()
    return cfg


def save_ppo_config(cfg: PPOConfig, path: Path) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
