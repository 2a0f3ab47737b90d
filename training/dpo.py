"""Stage 4 (alternative to reward model + PPO, `algorithm: dpo`): TRL DPOTrainer with LoRA on the SFT model.

The reference is the SFT model itself with the adapter disabled (`ref_model=None` with peft), so no second
copy is held. Trains on the train preference pairs; the test pairs give held-out DPO reward accuracy and
margin (`trainer.evaluate`). The adapter is merged by the pipeline's merge stage, like PPO's.

Outputs in `out_dir`: `adapter/`, `checkpoints/`, `metrics.json`, `plots/dpo_curves.png`.

`python -m training.dpo --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from training.config import TrainConfig, frozen_base_dtype, trainer_kwargs
from training.data import ExportData
from training.stage_result import StageResult
from training.trl_stage import (
    device_and_4bit,
    heldout_rows,
    prepare_for_kbit,
    run_trainer,
    train_pairs,
    write_outputs,
)


def build_dpo_trainer(
    cfg: TrainConfig, model_dir: Path, data: ExportData, out_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """TRL's DPOTrainer with a fresh LoRA adapter on `model_dir` over the export's train pairs (test pairs for
    held-out accuracy and margin), and the counts the metrics report."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from model_store.loading import load_causal_lm, load_tokenizer, lora_config
    from training.causal_mask import skip_redundant_causal_mask

    pairs = train_pairs(cfg, data, "DPO")
    device, four_bit = device_and_4bit(cfg)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(
        model_dir, dtype=frozen_base_dtype(cfg, device, four_bit), load_in_4bit=four_bit, device=device
    )
    model = prepare_for_kbit(model, cfg.dpo, four_bit)
    args = DPOConfig(
        **trainer_kwargs(cfg.dpo, cfg, device, out_dir / "checkpoints"),
        max_length=cfg.dpo.max_length,
        beta=cfg.dpo.beta,
        loss_type=[cfg.dpo.loss_type],
        eval_strategy="no",
    )
    test = heldout_rows(data.pairs.get("test"), cfg.dpo)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        eval_dataset=Dataset.from_list(test) if test else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "CAUSAL_LM"),
    )
    # TRL's DPO collator flushes each prompt + answer to the left (pads only on the right), so SDPA can run causal
    # without the padding mask, for the policy's forward and the reference's (the same model, adapter off).
    skip_redundant_causal_mask(trainer.model)
    n_test = len(data.pairs.get("test") or [])
    return trainer, {
        "pairs_train": len(pairs),
        "pairs_test": n_test,
        "pairs_test_scored": len(test),
        "qlora": four_bit,
    }


def train_dpo(
    cfg: TrainConfig,
    *,
    model_dir: Path,
    data: ExportData,
    out_dir: Path,
    resume: bool = False,
    budget_s: float | None = None,
) -> StageResult:
    """Train the DPO policy adapter on `model_dir`. Returns the stage result dict."""
    started = time.monotonic()  # the time budget counts loading the models
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer, sizing = build_dpo_trainer(cfg, model_dir, data, out_dir)
    run = run_trainer(trainer, out_dir, resume=resume, budget_s=budget_s, started=started)
    if not run.is_main:
        return StageResult.done()
    metrics = {
        "pairs_train": sizing["pairs_train"],
        "pairs_test": sizing["pairs_test"],
        "pairs_test_scored": sizing["pairs_test_scored"],
        **run.summary(),
        "beta": cfg.dpo.beta,
        "heldout_accuracy": run.heldout.get("eval_rewards/accuracies"),
        "heldout_mean_margin": run.heldout.get("eval_rewards/margins"),
        "heldout_loss": run.heldout.get("eval_loss"),
        "qlora": sizing["qlora"],
    }
    curves = ["loss", "rewards/accuracies", "rewards/margins"]
    plots = write_outputs(cfg, out_dir, metrics, run.history, curves, "dpo_curves", "DPO")
    return StageResult.done(outputs={"adapter": str(run.adapter)}, metrics=metrics, plots=plots)


def main(argv: list[str] | None = None) -> int:
    from training.stage_cli import run_stage_cli

    return run_stage_cli("dpo", train_dpo, argv)


if __name__ == "__main__":
    sys.exit(main())
