"""Stage 4 from thumbs (`algorithm: kto`): TRL KTOTrainer with LoRA on the SFT model, on rated answers.

KTO (Kahneman-Tversky Optimisation) learns from single answers labelled good or bad, so every 👍 and every
lone 👎 (with no better answer to pair it with) is training data; DPO and the reward model need pairs.
The rows come from the export's `unpaired.train.jsonl` (`{"prompt", "completion", "label"}`, TRL's
unpaired preference format). The reference is the SFT model itself with the adapter disabled
(`ref_model=None` with peft), so no second copy is held. The test split gives held-out KTO rewards
(`trainer.evaluate`). The adapter is merged by the pipeline's merge stage, like DPO's.

Outputs in `out_dir`: `adapter/`, `checkpoints/`, `metrics.json`, `plots/kto_curves.png`.

`python -m training.kto --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

from training.config import TrainConfig, frozen_base_dtype, trainer_kwargs
from training.data import ExportData, require
from training.stage_result import StageResult
from training.trl_stage import device_and_4bit, heldout_rows, prepare_for_kbit, run_trainer, write_outputs


def label_counts(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(good, bad): how many rated answers carry label true and false."""
    good = sum(1 for r in rows if r["label"])
    return good, len(rows) - good


def shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The rows in a seeded random order. KTOTrainer reads its data in order (it estimates the KL term from
    the mismatched answers of one batch), and an export lists ratings by interaction: unshuffled, a batch
    would hold one question's answers, or only thumbs down."""
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


def train_kto(
    cfg: TrainConfig,
    *,
    model_dir: Path,
    data: ExportData,
    out_dir: Path,
    resume: bool = False,
    budget_s: float | None = None,
) -> StageResult:
    """Train the KTO policy adapter on `model_dir`. Returns the stage result."""
    started = time.monotonic()  # the time budget counts loading the model
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from model_store.loading import load_causal_lm, load_tokenizer, lora_config

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    rows = data.unpaired.get("train", [])
    require(
        len(rows),
        cfg.data.min_ratings,
        "rated answers (thumbs up/down) in the train split",
        "Rate more answers with 👍/👎 in the app (or lower data.min_ratings) before KTO.",
    )
    device, four_bit = device_and_4bit(cfg)
    tokenizer = load_tokenizer(model_dir)
    model = prepare_for_kbit(
        load_causal_lm(
            model_dir, dtype=frozen_base_dtype(cfg, device, four_bit), load_in_4bit=four_bit, device=device
        ),
        cfg.kto,
        four_bit,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    args = KTOConfig(
        **trainer_kwargs(cfg.kto, cfg, device, out_dir / "checkpoints"),
        max_length=cfg.kto.max_length,
        beta=cfg.kto.beta,
        desirable_weight=cfg.kto.desirable_weight,
        undesirable_weight=cfg.kto.undesirable_weight,
        eval_strategy="no",
    )
    test = heldout_rows(data.unpaired.get("test"), cfg.kto)
    trainer = KTOTrainer(
        model=model,
        ref_model=None,
        args=args,
        train_dataset=Dataset.from_list(shuffled(rows, cfg.seed)),
        eval_dataset=Dataset.from_list(test) if len(test) >= 2 else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "CAUSAL_LM"),
    )
    run = run_trainer(trainer, out_dir, resume=resume, budget_s=budget_s, started=started)
    if not run.is_main:
        return StageResult.done()
    heldout = run.heldout
    good, bad = label_counts(rows)
    metrics = {
        "ratings_train": len(rows),
        "ratings_good": good,
        "ratings_bad": bad,
        "ratings_test": len(test),
        **run.summary(),
        "beta": cfg.kto.beta,
        "heldout_reward_good": heldout.get("eval_rewards/chosen"),
        "heldout_reward_bad": heldout.get("eval_rewards/rejected"),
        "heldout_mean_margin": heldout.get("eval_rewards/margins"),
        "heldout_loss": heldout.get("eval_loss"),
        "qlora": four_bit,
    }
    curves = ["loss", "rewards/chosen", "rewards/rejected", "kl"]
    plots = write_outputs(cfg, out_dir, metrics, run.history, curves, "kto_curves", "KTO")
    return StageResult.done(outputs={"adapter": str(run.adapter)}, metrics=metrics, plots=plots)


def main(argv: list[str] | None = None) -> int:
    from training.stage_cli import run_stage_cli

    return run_stage_cli("kto", train_kto, argv)


if __name__ == "__main__":
    sys.exit(main())
