"""Fold a chain of LoRA fine-tunes into one adapter on the chain's first base.

A retrain from the starter trains SFT on the merged starter, then PPO on the merged SFT model, so its final model is
v0001 + (B A)_starter + (B A)_sft + (B A)_ppo: every merge in the chain adds a LoRA delta to fp32 weights. The deltas
live in the same weight space whatever base each was trained on, so their sum is one adapter on v0001. PEFT's
`add_weighted_adapter` builds it: "cat" stacks the parts exactly (rank = the sum of their ranks), "svd" truncates
the summed delta to a smaller rank (an approximation). The folded adapter is saved in float16 and then checked the
way it will be used (v0001 + the saved fp16 adapter) against the chain's own merged model, so the card says how
close the shipped adapter is to what was measured.

`--weight` scales each part's delta (default 1 each: the chain itself). Weights below 1 on the later parts
interpolate between the first part and the chain's end in weight space (starter + w x the loop's deltas), the way
"task arithmetic" scales a fine-tune's difference; such a fold is a new model, not the chain, so it has no
reference to match and must be measured on its own.

    python scripts/train_starter.py fold --base v0001 --adapter STARTER --adapter SFT --adapter PPO \
        --reference RUN/merged --out OUT [--rank 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from training.errors import TrainingError

FOLDED = "folded"


class FoldError(TrainingError):
    """The adapters cannot be folded into one."""


def check_parts(adapters: list[Path]) -> list[dict[str, Any]]:
    """Each part's rank, alpha and targets (all must be plain LoRA on the same modules)."""
    parts = []
    for folder in adapters:
        path = Path(folder) / "adapter_config.json"
        if not path.is_file():
            raise FoldError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)")
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if cfg.get("peft_type") != "LORA" or cfg.get("use_dora") or cfg.get("use_rslora"):
            raise FoldError(f"{folder}: only plain LoRA adapters fold exactly (got {cfg.get('peft_type')})")
        parts.append(
            {
                "adapter": str(folder),
                "r": cfg["r"],
                "alpha": cfg["lora_alpha"],
                "targets": sorted(cfg["target_modules"]),
            }
        )
    if len({tuple(p["targets"]) for p in parts}) != 1:
        raise FoldError("the adapters target different modules; fold needs the same targets in every part")
    return parts


def fold_adapters(
    base_dir: Path,
    adapters: list[Path],
    out_dir: Path,
    *,
    rank: int | None = None,
    weights: list[float] | None = None,
    reference: Path | None = None,
    check_conversations: list[list[dict[str, str]]],
) -> dict[str, Any]:
    """Write one float16 adapter for `base_dir` equal to the chain `adapters` (in training order) into out_dir.

    rank None: exact ("cat"); else the summed delta truncated to `rank` by SVD. `weights` scale the parts' deltas
    (None: 1 each). With `reference` (the chain's final merged model) the folded adapter's logits are compared with
    it. Returns what was done and measured.
    """
    import torch
    from peft import PeftModel

    from model_store.loading import load_causal_lm
    from training.starter import save_half

    if not adapters:
        raise FoldError("nothing to fold: give at least one adapter")
    parts = check_parts(adapters)
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise FoldError(f"{len(weights)} weights for {len(adapters)} adapters: give one weight per adapter")
    if any(w <= 0 for w in weights):
        # a zero drops a part and a negative one subtracts it: neither is a fold of the chain, so both are refused
        raise FoldError(f"weights must be > 0, got {weights}")
    if reference is not None and any(w != 1 for w in weights):
        raise FoldError(
            "a weighted fold is not the chain: compare it with no --reference (measure it on its own)"
        )
    method = "cat" if rank is None else "svd"
    names = [f"part{i}" for i in range(len(adapters))]
    model = PeftModel.from_pretrained(
        load_causal_lm(base_dir, dtype=torch.float32), str(adapters[0]), names[0]
    )
    for name, folder in zip(names[1:], adapters[1:], strict=True):
        model.load_adapter(str(folder), adapter_name=name)
    model.add_weighted_adapter(names, weights, FOLDED, combination_type=method, svd_rank=rank)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[FOLDED])  # a non-default adapter goes to tmp/<name>/
        save_half(Path(tmp) / FOLDED, Path(out_dir))
    del model
    result: dict[str, Any] = {
        "method": method,
        "rank": sum(p["r"] for p in parts) if rank is None else rank,
        "parts": [{**p, "weight": w} for p, w in zip(parts, weights, strict=True)],
    }
    if reference is not None:
        result["vs_reference"] = compare_with_reference(
            base_dir, Path(out_dir), reference, check_conversations
        )
    return result


def compare_with_reference(
    base_dir: Path, adapter: Path, reference: Path, conversations: list[list[dict[str, str]]]
) -> dict[str, Any]:
    """v0001 + the saved (fp16) folded adapter against the chain's merged model: logit gap and greedy agreement."""
    import torch
    from peft import PeftModel

    from model_store.loading import load_causal_lm, load_tokenizer
    from training.merge import _encode, _logits, max_logit_diff

    inputs = _encode(load_tokenizer(reference), conversations, "cpu")
    expected = _logits(load_causal_lm(reference, dtype=torch.float32), inputs)
    folded = PeftModel.from_pretrained(load_causal_lm(base_dir, dtype=torch.float32), str(adapter))
    got = _logits(folded, inputs)
    gaps = [(a - b).abs() for a, b in zip(expected, got, strict=True)]
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(expected, got, strict=True))
    tokens = sum(a.shape[1] for a in expected)
    return {
        "reference": str(reference),
        "max_abs_logit_diff": max_logit_diff(expected, got),
        "mean_abs_logit_diff": float(sum(float(g.sum()) for g in gaps) / sum(g.numel() for g in gaps)),
        "greedy_agreement": same / tokens,
        "tokens": tokens,
    }


def copy_card(card: dict[str, Any], out_dir: Path, fold: dict[str, Any]) -> dict[str, Any]:
    """The first part's card (the starter's) with the fold recorded, written as out_dir/starter.json."""
    card = {**card, "folded": fold}
    (Path(out_dir) / "starter.json").write_text(
        json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8"
    )
    return card


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/train_starter.py fold", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="the chain's first base (the registry's v0001)")
    p.add_argument(
        "--adapter", type=Path, action="append", required=True, help="a part, in training order (repeat)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--rank", type=int, help="truncate the sum to this rank by SVD (default: exact, summed ranks)"
    )
    p.add_argument(
        "--weight",
        type=float,
        action="append",
        help="scale the matching --adapter's delta (repeat, one per adapter; default 1 each)",
    )
    p.add_argument("--reference", type=Path, help="the chain's final merged model, to compare the fold with")
    p.add_argument("--trained-with", help="replaces the card's trained_with (how the chain was made)")
    p.add_argument(
        "--report", type=Path, help="a benchmarks/loop.py report.json: its split and results go on the card"
    )
    return p


REPORT_KEYS = ("started_at", "split", "settings", "simulation", "retrain_run", "heldout", "deltas", "machine")


def main(argv: list[str] | None = None) -> int:
    from training.starter import check_conversations

    args = build_parser().parse_args(argv)
    if args.rank is not None and args.rank < 1:
        raise FoldError(f"--rank must be at least 1, got {args.rank}")
    # The card's inputs are read first: a broken card or report fails before the fold's minutes of work.
    card_path = Path(args.adapter[0]) / "starter.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {"kind": "starter"}
    if args.trained_with:
        card["trained_with"] = args.trained_with
    report = json.loads(Path(args.report).read_text(encoding="utf-8")) if args.report else None
    fold = fold_adapters(
        args.base,
        args.adapter,
        args.out,
        rank=args.rank,
        weights=args.weight,
        reference=args.reference,
        check_conversations=check_conversations(),
    )
    if report is not None:
        fold["loop"] = {k: report[k] for k in REPORT_KEYS if k in report}
    copy_card(card, args.out, fold)
    print(json.dumps({k: v for k, v in fold.items() if k != "loop"}, indent=1, default=str))
    return 0
