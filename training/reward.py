"""Stage 3, the reward model: TRL RewardTrainer, a one-output sequence classifier + LoRA (SEQ_CLS), from SFT.

Traps handled (measured with TRL 1.16 RewardTrainer on SmolLM2):
  - `RewardConfig.max_length` DROPS longer pairs instead of truncating them: it is set from the data
    (longest pair + a small margin) unless the config caps it; the pairs dropped are counted, and an empty
    train set after filtering is a clear error, not an IndexError deep in the Trainer;
  - the pad token is `<|endoftext|>` (not EOS) so the classifier pools at the real last token.
Below `data.min_pairs` preference pairs the stage refuses with a message saying how to get more.

Held-out metrics: the merged model scores the snapshot's test pairs with the same scoring function PPO uses
(model_store.reward.score_with_reward_model): pair accuracy (chosen > rejected) and mean margin, and the accuracy
on the pairs where the abstention sentence won and where it lost.

Abstention balance (`data.balance_abstention`): in a loop from the starter (400 simulated questions, a fifth
unanswerable) the abstention lost 161 of the 496 training pairs (answerable questions) and won 68 (unanswerable
ones). The reward model learned the shortcut: it ranked the abstention below the other answer in every pair it had
been trained to prefer it in (accuracy 0.00, also after a full epoch; 1.00 where it lost), so PPO learned not to
abstain (held-out squad2 abstention recall 0.50 -> 0.18). Repeating the rarer kind until both are equally common
took that accuracy to 0.50 on the same pairs (docs/results/loop/from_starter/rm_balance.json): halved, not gone.

Outputs in `out_dir`: `adapter/`, `merged/` (the folder PPO takes as reward_dir), `checkpoints/`,
`metrics.json`, `plots/rm_curves.png`.

`python -m training.reward --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from evaluation.metrics import abstention_outcome, accuracy_by_abstention
from training.config import TrainConfig, trainer_kwargs
from training.data import ExportData, TrainingDataError, conversation_lengths
from training.stage_result import StageResult
from training.trl_stage import (
    device_and_4bit,
    merge_trained,
    prepare_for_kbit,
    run_trainer,
    train_pairs,
    write_outputs,
)

LENGTH_MARGIN = 8  # tokens on top of the longest rendered pair (TRL may append an EOS of its own)


def pair_lengths(tokenizer: Any, pairs: list[dict[str, Any]]) -> list[int]:
    """Per pair, the longer of the rendered prompt+chosen and prompt+rejected, in tokens."""
    chosen = conversation_lengths(tokenizer, [p["prompt"] + p["chosen"] for p in pairs])
    rejected = conversation_lengths(tokenizer, [p["prompt"] + p["rejected"] for p in pairs])
    return [max(a, b) for a, b in zip(chosen, rejected, strict=True)]


def heldout_metrics(
    model_dir: Path, pairs: list[dict[str, Any]], batch_size: int, device: str
) -> dict[str, Any]:
    """Pair accuracy and mean margin (chosen score - rejected score) of a merged reward model folder."""
    import torch

    from model_store.reward import load_reward_model, score_with_reward_model

    if not pairs:
        return {"heldout_pairs": 0, "heldout_accuracy": None, "heldout_mean_margin": None}
    model, tokenizer = load_reward_model(model_dir, bf16=False, device=torch.device(device))
    prompts = [p["prompt"] for p in pairs]
    dev = torch.device(device)
    chosen = score_with_reward_model(
        model, tokenizer, prompts, [p["chosen"][-1]["content"] for p in pairs], batch_size, dev
    )
    rejected = score_with_reward_model(
        model, tokenizer, prompts, [p["rejected"][-1]["content"] for p in pairs], batch_size, dev
    )
    margins = chosen - rejected
    by_kind: dict[str, Any] = {}
    split = accuracy_by_abstention(margins.tolist(), [abstention_outcome_of(p) for p in pairs])
    for outcome in ("won", "lost"):
        accuracy = split[outcome]["accuracy"]
        by_kind[f"heldout_accuracy_abstention_{outcome}"] = None if math.isnan(accuracy) else accuracy
        by_kind[f"heldout_pairs_abstention_{outcome}"] = split[outcome]["n"]
    return {
        "heldout_pairs": len(pairs),
        "heldout_accuracy": float((margins > 0).float().mean()),
        "heldout_mean_margin": float(margins.mean()),
        **by_kind,
    }


def abstention_outcome_of(pair: dict[str, Any]) -> str:
    """evaluation.metrics.abstention_outcome of a TRL conversational pair: "won", "lost" or "neither"."""
    return abstention_outcome(pair["chosen"][-1]["content"], pair["rejected"][-1]["content"])


def abstention_counts(pairs: list[dict[str, Any]]) -> dict[str, int]:
    outcomes = Counter(abstention_outcome_of(p) for p in pairs)
    return {"won": outcomes["won"], "lost": outcomes["lost"], "other": outcomes["neither"]}


def balance_abstention(pairs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The pairs with the rarer of "abstention won" / "abstention lost" repeated (whole copies first, then a
    seeded sample) until both kinds are as common; unchanged when either kind is absent (nothing to balance
    against) or they already are. Shuffled with `seed`, so the repeats are not adjacent."""
    import random

    outcomes = [abstention_outcome_of(p) for p in pairs]
    won = [p for p, o in zip(pairs, outcomes, strict=True) if o == "won"]
    lost = [p for p, o in zip(pairs, outcomes, strict=True) if o == "lost"]
    if not won or not lost or len(won) == len(lost):
        return pairs
    rare, common = (won, lost) if len(won) < len(lost) else (lost, won)
    rng = random.Random(seed)
    missing = len(common) - len(rare)
    extra = rare * (missing // len(rare)) + rng.sample(rare, missing % len(rare))
    out = pairs + extra
    rng.shuffle(out)
    return out


def build_reward_trainer(
    cfg: TrainConfig, model_dir: Path, pairs: list[dict[str, Any]], out_dir: Path
) -> tuple[Any, dict[str, Any]]:
    """The RewardTrainer (LoRA SEQ_CLS on `model_dir`: a one-output score head, no LM head) over `pairs`, and
    what was sized from the data (max_length, pairs longer than it)."""
    from datasets import Dataset
    from trl import RewardConfig

    from model_store.loading import load_sequence_classifier, load_tokenizer, lora_config
    from model_store.reward import use_reward_padding
    from training.causal_mask import skip_redundant_causal_mask
    from training.pair_batching import LengthGroupedRewardTrainer

    device, four_bit = device_and_4bit(cfg)
    tokenizer = use_reward_padding(load_tokenizer(model_dir))
    lengths = pair_lengths(tokenizer, pairs)
    max_length = cfg.reward.max_length or (max(lengths) + LENGTH_MARGIN)
    model = load_sequence_classifier(
        model_dir, load_in_4bit=four_bit, device=device, pad_token_id=tokenizer.pad_token_id
    )
    model = prepare_for_kbit(model, cfg.reward, four_bit)
    args = RewardConfig(
        **trainer_kwargs(cfg.reward, cfg, device, out_dir / "checkpoints"),
        max_length=max_length,
        eval_strategy="no",
    )
    trainer = LengthGroupedRewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets, "SEQ_CLS"),
    )
    skip_redundant_causal_mask(trainer.model)  # TRL pads pairs on the right: SDPA can run causal
    sizing = {"max_length": max_length, "too_long": sum(n > max_length for n in lengths), "qlora": four_bit}
    return trainer, sizing


def train_reward_model(
    cfg: TrainConfig,
    *,
    model_dir: Path,
    data: ExportData,
    out_dir: Path,
    resume: bool = False,
    budget_s: float | None = None,
) -> StageResult:
    """Train, merge and evaluate the reward model. Returns the stage result dict."""
    started = time.monotonic()  # the time budget counts loading the model
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    pairs = train_pairs(cfg, data, "training a reward model")
    balance = abstention_counts(pairs)
    if cfg.data.balance_abstention:
        pairs = balance_abstention(pairs, cfg.seed)
    device, four_bit = device_and_4bit(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer, sizing = build_reward_trainer(cfg, model_dir, pairs, out_dir)
    max_length, too_long = sizing["max_length"], sizing["too_long"]
    tokenizer = trainer.processing_class
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise TrainingDataError(
            f"every one of the {len(pairs)} preference pairs is longer than reward.max_length={max_length} "
            "tokens and RewardTrainer drops them; raise reward.max_length (or set it to null to size it "
            "from the data)"
        )
    # the budget keeps room for scoring the held-out pairs after the merge
    test = data.pairs.get("test", [])
    run = run_trainer(
        trainer, out_dir, resume=resume, budget_s=budget_s, started=started, scored_after=len(test), cfg=cfg
    )
    del trainer
    if not run.is_main:
        return StageResult.done()
    tokenizer.save_pretrained(str(run.adapter))  # with the <|endoftext|> pad token the merged model needs

    checks = [p["prompt"] + p["chosen"] for p in pairs[: cfg.merge.check_prompts]]
    merged = out_dir / "merged"
    merge = merge_trained(
        cfg, model_dir, run.adapter, merged, task="seq_cls", qlora=four_bit, checks=checks, device=device
    )
    accuracies = [row["accuracy"] for row in run.history if "accuracy" in row]
    metrics = {
        "pairs_train": len(pairs),
        "abstention_pairs": {**balance, "balanced": cfg.data.balance_abstention},
        "pairs_used": kept,
        "pairs_dropped_too_long": len(pairs) - kept,
        "pairs_longer_than_max_length": too_long,
        "max_length": max_length,
        **run.summary(),
        "last_logged_train_accuracy": accuracies[-1] if accuracies else None,
        "qlora": four_bit,
        "merge": merge,
        **heldout_metrics(merged, test, cfg.reward.batch_size, device),
    }
    curves = ["loss", "accuracy", "margin"]
    plots = write_outputs(cfg, out_dir, metrics, run.history, curves, "rm_curves", "Reward model")
    return StageResult.done(
        outputs={"adapter": str(run.adapter), "merged": str(merged)}, metrics=metrics, plots=plots
    )


def main(argv: list[str] | None = None) -> int:
    from training.stage_cli import run_stage_cli

    return run_stage_cli("rm", train_reward_model, argv)


if __name__ == "__main__":
    sys.exit(main())
