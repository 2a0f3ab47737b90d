"""Stage 4 (alternative to reward model + PPO, `algorithm: dpo`): TRL DPOTrainer with LoRA on the SFT model.

The reference is the SFT model itself with the adapter disabled (`ref_model=None` with peft), so no second
copy is held. Trains on the train preference pairs; the test pairs give held-out DPO reward accuracy and
margin (`trainer.evaluate`). The adapter is merged by the pipeline's merge stage, like PPO's.

Outputs in `out_dir`: `adapter/`, `checkpoints/`, `metrics.json`, `plots/dpo_curves.png`.

`python -m training.dpo --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from training.config import TrainConfig, resolve_device, trainer_kwargs, want_4bit
from training.data import ExportData, require


def train_dpo(
    cfg: TrainConfig, *, model_dir: Path, data: ExportData, out_dir: Path, resume: bool = False
) -> dict[str, Any]:
    """Train the DPO policy adapter on `model_dir`. Returns the stage result dict."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from model_store.loading import load_causal_lm, load_tokenizer, lora_config
    from training.plots import plot_curves
    from training.sft import last_checkpoint

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    pairs = data.pairs.get("train", [])
    require(
        len(pairs),
        cfg.data.min_pairs,
        "preference pairs in the train split",
        "Rank more answers in the app (or lower data.min_pairs) before DPO.",
    )
    device = resolve_device(cfg)
    four_bit = want_4bit(cfg, device)
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, load_in_4bit=four_bit, device=device)
    if four_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.dpo.gradient_checkpointing
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    args = DPOConfig(
        **trainer_kwargs(cfg.dpo, cfg, device, out_dir / "checkpoints"),
        max_length=cfg.dpo.max_length,
        beta=cfg.dpo.beta,
        loss_type=[cfg.dpo.loss_type],
        eval_strategy="no",
    )
    test = data.pairs.get("test") or []
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        eval_dataset=Dataset.from_list(test) if test else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "CAUSAL_LM"),
    )
    train_out = trainer.train(
        resume_from_checkpoint=last_checkpoint(out_dir / "checkpoints") if resume else None
    )
    heldout = trainer.evaluate() if test else {}
    adapter = out_dir / "adapter"
    trainer.save_model(str(adapter))
    history = list(trainer.state.log_history)
    processes = trainer.accelerator.num_processes
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return {"status": "done", "reason": None, "outputs": {}, "metrics": {}, "plots": []}
    metrics = {
        "pairs_train": len(pairs),
        "pairs_test": len(test),
        "steps": int(train_out.global_step),
        "processes": processes,
        "train_loss": float(train_out.training_loss),
        "beta": cfg.dpo.beta,
        "heldout_accuracy": heldout.get("eval_rewards/accuracies"),
        "heldout_mean_margin": heldout.get("eval_rewards/margins"),
        "heldout_loss": heldout.get("eval_loss"),
        "runtime_s": float(train_out.metrics.get("train_runtime", 0.0)),
        "qlora": four_bit,
    }
    (out_dir / "metrics.json").write_text(json.dumps({"summary": metrics, "log_history": history}, indent=1))
    plots = []
    if cfg.plots:
        png = plot_curves(
            history,
            ["loss", "rewards/accuracies", "rewards/margins"],
            out_dir / "plots" / "dpo_curves.png",
            "DPO",
        )
        plots = [str(png)] if png else []
    return {
        "status": "done",
        "reason": None,
        "outputs": {"adapter": str(adapter)},
        "metrics": metrics,
        "plots": plots,
    }


def main(argv: list[str] | None = None) -> int:
    from training.pipeline import run_stage_cli

    return run_stage_cli("dpo", argv)


if __name__ == "__main__":
    sys.exit(main())
