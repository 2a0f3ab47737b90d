"""Stage 2, supervised fine-tuning: TRL SFTTrainer with LoRA on the feedback's demonstrations.

Loss on the answer tokens only, and logits only there (training/answer_loss.py): demonstrations are
converted to TRL's conversational prompt/completion format (training/data.py), for which SFTTrainer masks
the prompt (labels -100) with the stock chat template; `assistant_only_loss` would need `{% generation %}` tags SmolLM2's template lacks (TRL 1.16
auto-patches only templates it knows).
On CUDA the base is loaded in 4-bit (QLoRA: nf4, double quantisation, bf16 compute).

Outputs in `out_dir`: `adapter/` (LoRA + tokenizer), `merged/` (the full SFT model: the starting point of
the reward model and PPO), `checkpoints/` (for --resume), `metrics.json`, `plots/sft_loss.png`.
Skipped, with a reason, when there are fewer than `data.min_demonstrations` demonstrations.

`python -m training.sft --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from training.config import TrainConfig, frozen_base_dtype, resolve_device, trainer_kwargs, want_4bit
from training.data import ExportData
from training.stage_result import StageResult
from training.trl_stage import (
    device_and_4bit,
    heldout_rows,
    merge_trained,
    prepare_for_kbit,
    run_trainer,
    write_outputs,
)


def skipped(reason: str, **metrics: Any) -> StageResult:
    return StageResult.skipped(reason, metrics)


def build_sft_trainer(cfg: TrainConfig, model_dir: Path, data: ExportData, out_dir: Path) -> Any:
    """The SFTTrainer (LoRA on `model_dir`) over the train demonstrations; eval set = the test split."""
    from datasets import Dataset
    from trl import SFTConfig

    from model_store.loading import load_causal_lm, load_tokenizer, lora_config
    from training.answer_loss import AnswerOnlySFTTrainer

    device = resolve_device(cfg)
    four_bit = want_4bit(cfg, device)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(
        model_dir, dtype=frozen_base_dtype(cfg, device, four_bit), load_in_4bit=four_bit, device=device
    )
    model = prepare_for_kbit(model, cfg.sft, four_bit)
    args = SFTConfig(
        **trainer_kwargs(cfg.sft, cfg, device, out_dir / "checkpoints"),
        max_length=cfg.sft.max_length,
        completion_only_loss=True,
        # Padding-free batches need a varlen attention kernel (flash attention, CUDA only): with SDPA on CPU
        # transformers turns the flattened batch into one [sum_len x sum_len] block-diagonal mask, ~8x the
        # attention work of the padded batch at 8 x 512. Length-grouped batches (trainer_kwargs) instead.
        padding_free=False,
        packing=False,
        eval_strategy="no",
    )
    lora = lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "CAUSAL_LM")
    test = heldout_rows(data.sft.get("test"), cfg.sft)
    return AnswerOnlySFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(data.sft["train"]),
        eval_dataset=Dataset.from_list(test) if test else None,
        processing_class=tokenizer,
        peft_config=lora,
    )


def train_sft(
    cfg: TrainConfig,
    *,
    model_dir: Path,
    data: ExportData,
    out_dir: Path,
    resume: bool = False,
    budget_s: float | None = None,
) -> StageResult:
    """Run SFT + merge. Returns the stage result dict (status, reason, outputs, metrics, plots)."""
    started = time.monotonic()  # the time budget counts loading the model
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
    run = run_trainer(trainer, out_dir, resume=resume, budget_s=budget_s, started=started, cfg=cfg)
    del trainer
    if not run.is_main:
        return StageResult.done()

    device, qlora = device_and_4bit(cfg)
    checks = [ex["prompt"] + ex["completion"] for ex in data.sft["train"][: cfg.merge.check_prompts]]
    merge = merge_trained(
        cfg,
        model_dir,
        run.adapter,
        out_dir / "merged",
        task="causal_lm",
        qlora=qlora,
        checks=checks,
        device=device,
    )
    losses = [row["loss"] for row in run.history if "loss" in row]
    metrics = {
        "demonstrations_train": n_train,
        "demonstrations_test": n_test,
        **run.summary(),
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "eval_loss": run.heldout.get("eval_loss"),
        "qlora": qlora,
        "merge": merge,
    }
    plots = write_outputs(cfg, out_dir, metrics, run.history, ["loss"], "sft_loss", "SFT")
    return StageResult.done(
        outputs={"adapter": str(run.adapter), "merged": str(out_dir / "merged")}, metrics=metrics, plots=plots
    )


def main(argv: list[str] | None = None) -> int:
    from training.stage_cli import run_stage_cli

    return run_stage_cli("sft", train_sft, argv)


if __name__ == "__main__":
    sys.exit(main())
