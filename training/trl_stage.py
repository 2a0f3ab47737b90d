"""The skeleton SFT, the reward model and DPO share: load for training, run a TRL trainer, save, report.

Each stage builds its own TRL trainer (SFTTrainer, RewardTrainer, DPOTrainer) and its own metrics; the steps around
it are the same and live here once: the QLoRA preparation, training with resume from the newest checkpoint, the
held-out evaluation, saving the adapter on the main process, and writing metrics.json and the curves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import TrainConfig, TrainerSection, resolve_device, want_4bit
from training.data import ExportData, require


@dataclass(frozen=True)
class TrainRun:
    """What one TRL training run left: its output, log, held-out metrics and where the adapter is."""

    train_out: Any  # transformers TrainOutput
    history: list[dict[str, Any]]  # trainer.state.log_history
    heldout: dict[str, Any]  # trainer.evaluate() on the eval split ({} without one)
    adapter: Path
    processes: int
    is_main: bool  # only the main process merges and reports
    time_budget: dict[str, Any] | None = None  # training/time_budget.py's record (None without a budget)
    compile: dict[str, Any] | None = None  # training/layer_compile.py's choice and why
    attention: dict[str, Any] | None = None  # training/block_attention.py's choice and why

    def summary(self) -> dict[str, Any]:
        """The metrics every stage reports."""
        return {
            "steps": int(self.train_out.global_step),
            "processes": self.processes,
            "train_loss": float(self.train_out.training_loss),
            "runtime_s": float(self.train_out.metrics.get("train_runtime", 0.0)),
            **({"time_budget": self.time_budget} if self.time_budget else {}),
            **({"compile": self.compile} if self.compile else {}),
            **({"attention": self.attention} if self.attention else {}),
        }


def train_pairs(cfg: TrainConfig, data: ExportData, before: str) -> list[dict[str, Any]]:
    """The train split's preference pairs, refused (TrainingDataError) below data.min_pairs."""
    pairs = data.pairs.get("train", [])
    require(
        len(pairs),
        cfg.data.min_pairs,
        "preference pairs in the train split",
        f"Rank more answers in the app (or lower data.min_pairs) before {before}.",
    )
    return pairs


def heldout_rows(rows: list[dict[str, Any]] | None, section: TrainerSection) -> list[dict[str, Any]]:
    """The test split's rows the trainer evaluates on: the first `max_eval_examples` (the split is shuffled)."""
    rows = rows or []
    return rows if section.max_eval_examples is None else rows[: section.max_eval_examples]


def device_and_4bit(cfg: TrainConfig) -> tuple[str, bool]:
    """Where to train and whether QLoRA (nf4) is on: it needs CUDA."""
    device = resolve_device(cfg)
    return device, want_4bit(cfg, device)


def merge_trained(
    cfg: TrainConfig,
    model_dir: Path,
    adapter: Path,
    out: Path,
    *,
    task: str,
    qlora: bool,
    checks: list[Any],
    device: str,
) -> dict[str, Any]:
    """Merge the stage's adapter into its base in full precision, checked on `checks` (training.merge)."""
    from training.merge import merge_adapter

    return merge_adapter(
        model_dir,
        adapter,
        out,
        task=task,
        qlora=qlora,
        check_conversations=checks,
        atol=cfg.merge.qlora_atol if qlora else cfg.merge.atol,
        device=device,
    )


def last_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` a Trainer saved in `folder`, for resume_from_checkpoint."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def prepare_for_kbit(model: Any, section: TrainerSection, four_bit: bool) -> Any:
    """QLoRA: a 4-bit model is prepared for training (casts, input grads); otherwise unchanged."""
    if not four_bit:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=section.gradient_checkpointing)


def run_trainer(
    trainer: Any,
    out_dir: Path,
    *,
    resume: bool,
    budget_s: float | None = None,
    started: float | None = None,
    scored_after: int = 0,
    cfg: TrainConfig | None = None,
) -> TrainRun:
    """Train (from the newest checkpoint when resuming) within `budget_s` seconds from `started` (the stage's
    time.monotonic() start; None = when training begins) when given, evaluate on the eval split, save the
    adapter. The budget keeps room for that evaluation and for `scored_after` more held-out examples the stage
    scores itself afterwards. With `cfg`, its `model.attention` and `model.compile` choose the attention and whether the decoder layers
    are compiled."""
    compiled = attention = None
    if cfg is not None:
        compiled, attention = prepare_trainer(trainer, cfg)
    budget = None
    if budget_s is not None:
        from training.time_budget import TimeBudget

        evaluated = len(trainer.eval_dataset) if trainer.eval_dataset is not None else 0
        budget = TimeBudget(
            trainer,
            budget_s,
            started=started,
            after_examples=evaluated + scored_after,
            first_step_compiles=bool(compiled and compiled["compiled"]),
        )
        trainer.add_callback(budget)
    train_out = trainer.train(
        resume_from_checkpoint=last_checkpoint(out_dir / "checkpoints") if resume else None
    )
    if compiled and compiled["compiled"]:
        from training.layer_compile import uncompile_layers

        # the held-out evaluation runs eager: a no-grad forward would be another 30-90 s compile for 64 examples
        uncompile_layers(trainer.model)
    heldout = trainer.evaluate() if trainer.eval_dataset is not None else {}
    adapter = out_dir / "adapter"
    trainer.save_model(str(adapter))  # main process only; adapter weights + tokenizer
    history = list(trainer.state.log_history)
    processes = trainer.accelerator.num_processes
    trainer.accelerator.wait_for_everyone()
    return TrainRun(
        train_out,
        history,
        heldout,
        adapter,
        processes,
        trainer.is_world_process_zero(),
        budget.record if budget else None,
        compiled,
        attention,
    )


def prepare_trainer(trainer: Any, cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config's `model.compile` and `model.attention` applied to a trainer about to train: the attention is set
    before the layers are compiled (compiled layers call the query blocks outside their graph).
    -> (compile, attention) choices as JSON."""
    from training import block_attention, layer_compile

    attention = block_attention.apply_to_trainer(trainer, cfg.model.attention)
    compiling = layer_compile.choice_for_trainer(trainer, cfg.model.compile, cfg.model.compile_min_steps)
    compiled = layer_compile.compile_if_chosen(trainer, compiling)
    return compiled.to_json(), attention.to_json()


def write_outputs(
    cfg: Any,
    out_dir: Path,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    curves: list[str],
    name: str,
    title: str,
) -> list[str]:
    """metrics.json (summary + the trainer's log) and, when plots are on, `plots/<name>.png`; -> the plots."""
    from training.plots import plot_curves

    (out_dir / "metrics.json").write_text(json.dumps({"summary": metrics, "log_history": history}, indent=1))
    if not cfg.plots:
        return []
    png = plot_curves(history, curves, out_dir / "plots" / f"{name}.png", title)
    return [str(png)] if png else []
