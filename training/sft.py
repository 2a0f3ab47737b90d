"""Stage 2, supervised fine-tuning: TRL SFTTrainer with LoRA on the feedback's demonstrations.

Loss on the answer tokens only: demonstrations are converted to TRL's conversational prompt/completion
format (training/data.py), for which SFTTrainer masks the prompt (labels -100) with the stock chat
template; `assistant_only_loss` would need `{% generation %}` tags SmolLM2's template lacks (STACK-NOTES 3).
On CUDA the base is loaded in 4-bit (QLoRA: nf4, double quantisation, bf16 compute).

Outputs in `out_dir`: `adapter/` (LoRA + tokenizer), `merged/` (the full SFT model: the starting point of
the reward model and PPO), `checkpoints/` (for --resume), `metrics.json`, `plots/sft_loss.png`.
Skipped, with a reason, when there are fewer than `data.min_demonstrations` demonstrations.

`python -m training.sft --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig, resolve_device, trainer_kwargs, want_4bit
from training.data import ExportData


def skipped(reason: str, **metrics: Any) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, "outputs": {}, "metrics": metrics, "plots": []}


def build_sft_trainer(cfg: TrainConfig, model_dir: Path, data: ExportData, out_dir: Path) -> Any:
    """The SFTTrainer (LoRA on `model_dir`) over the train demonstrations; eval set = the test split."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from model_store.loading import load_causal_lm, load_tokenizer, lora_config

    device = resolve_device(cfg)
    four_bit = want_4bit(cfg, device)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, load_in_4bit=four_bit, device=device)
    if four_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.sft.gradient_checkpointing
        )
    args = SFTConfig(
        **trainer_kwargs(cfg.sft, cfg, device, out_dir / "checkpoints"),
        max_length=cfg.sft.max_length,
        completion_only_loss=True,
        packing=False,
        eval_strategy="no",
    )
    lora = lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "CAUSAL_LM")
    test = data.sft.get("test") or []
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.sft["train"]),
        eval_dataset=Dataset.from_list(test) if test else None,
        processing_class=tokenizer,
        peft_config=lora,
    )


def last_checkpoint(folder: Path) -> str | None:
    """The newest `checkpoint-N` a Trainer saved in `folder`, for resume_from_checkpoint."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_sft(
    cfg: TrainConfig, *, model_dir: Path, data: ExportData, out_dir: Path, resume: bool = False
) -> dict[str, Any]:
    """Run SFT + merge. Returns the stage result dict (status, reason, outputs, metrics, plots)."""
    from training.merge import merge_adapter
    from training.plots import plot_curves

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    n_train, n_test = len(data.sft.get("train", [])), len(data.sft.get("test", []))
    if n_train < cfg.data.min_demonstrations:
        return skipped(
            f"SFT skipped: {n_train} demonstrations in the train split, fewer than data.min_demonstrations="
            f"{cfg.data.min_demonstrations} (corrections and thumbs-up answers make demonstrations); "
            "the reward model and policy start from the unchanged model",
            demonstrations_train=n_train,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_sft_trainer(cfg, model_dir, data, out_dir)
    train_out = trainer.train(
        resume_from_checkpoint=last_checkpoint(out_dir / "checkpoints") if resume else None
    )
    eval_loss = trainer.evaluate()["eval_loss"] if trainer.eval_dataset is not None else None
    adapter = out_dir / "adapter"
    trainer.save_model(str(adapter))  # main process only; adapter weights + tokenizer
    history = list(trainer.state.log_history)
    processes = trainer.accelerator.num_processes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return {"status": "done", "reason": None, "outputs": {}, "metrics": {}, "plots": []}
    del trainer

    device = resolve_device(cfg)
    checks = [ex["prompt"] + ex["completion"] for ex in data.sft["train"][: cfg.merge.check_prompts]]
    qlora = want_4bit(cfg, device)
    merge = merge_adapter(
        model_dir,
        adapter,
        out_dir / "merged",
        task="causal_lm",
        qlora=qlora,
        check_conversations=checks,
        atol=cfg.merge.qlora_atol if qlora else cfg.merge.atol,
        device=device,
    )
    losses = [row["loss"] for row in history if "loss" in row]
    metrics = {
        "demonstrations_train": n_train,
        "demonstrations_test": n_test,
        "steps": int(train_out.global_step),
        "processes": processes,
        "train_loss": float(train_out.training_loss),
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "eval_loss": eval_loss,
        "runtime_s": float(train_out.metrics.get("train_runtime", 0.0)),
        "qlora": qlora,
        "merge": merge,
    }
    (out_dir / "metrics.json").write_text(json.dumps({"summary": metrics, "log_history": history}, indent=1))
    plots = []
    if cfg.plots:
        png = plot_curves(history, ["loss", "mean_token_accuracy"], out_dir / "plots" / "sft_loss.png", "SFT")
        plots = [str(png)] if png else []
    return {
        "status": "done",
        "reason": None,
        "outputs": {"adapter": str(adapter), "merged": str(out_dir / "merged")},
        "metrics": metrics,
        "plots": plots,
    }


def main(argv: list[str] | None = None) -> int:
    from training.pipeline import run_stage_cli

    return run_stage_cli("sft", argv)


if __name__ == "__main__":
    sys.exit(main())
