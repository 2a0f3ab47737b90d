"""Merge a LoRA adapter into its base in full precision, and prove the merged model is the adapter model.

Rules (ARCHITECTURE "Merge", STACK-NOTES section 6):
  - never merge into a 4-bit-loaded base (it re-quantises; error ~1e-1);
  - a QLoRA adapter (trained on an nf4 base, CUDA) is merged with recipe B: load the base with the same
    BitsAndBytes config, `model.dequantize()`, PeftModel.from_pretrained, merge_and_unload. Its residual
    equals the nf4 kernel's own error, so the check uses `qlora_atol`;
  - the merged folder is written to `<out>.partial` and renamed, then reloaded from disk with plain
    transformers (no peft) and its logits compared with the adapter model's on a few conversations; a
    difference above `atol` raises MergeError and the folder is removed (the run fails, nothing is published).

`python -m training.merge --base DIR --adapter DIR --out DIR [--task causal_lm|seq_cls]` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]
TASKS = ("causal_lm", "seq_cls")


class MergeError(RuntimeError):
    """The merged model does not reproduce the adapter model, or the inputs are unusable."""


def _load(task: str, path: Path, *, four_bit: bool, device: str, pad_token_id: int | None) -> Any:
    import torch

    from model_store.loading import load_causal_lm, load_sequence_classifier

    dtype = torch.float32  # full precision: the merge adds B@A into the weights without rounding them to bf16
    if task == "causal_lm":
        return load_causal_lm(path, dtype=dtype, load_in_4bit=four_bit, device=device)
    return load_sequence_classifier(
        path, dtype=dtype, load_in_4bit=four_bit, device=device, pad_token_id=pad_token_id
    )


def _encode(tokenizer: Any, conversations: list[Messages], device: str) -> list[Any]:
    """One [1, T] id tensor per conversation (no padding: nothing to mask when comparing logits)."""
    import torch

    out = []
    for messages in conversations:
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        out.append(torch.tensor([ids], dtype=torch.long, device=device))
    return out


def _logits(model: Any, inputs: list[Any]) -> list[Any]:
    """Logits per input: causal LM [1, T, V]; sequence classifier [1, 1]. fp32 on CPU."""
    import torch

    model.eval()
    with torch.no_grad():
        return [model(input_ids=ids).logits.float().cpu() for ids in inputs]


def max_logit_diff(a: list[Any], b: list[Any]) -> float:
    """max |a - b| over all tensors of two same-shaped lists."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)) if a else 0.0


def merge_adapter(
    base_dir: Path,
    adapter_dir: Path,
    out_dir: Path,
    *,
    task: str = "causal_lm",
    qlora: bool = False,
    check_conversations: list[Messages],
    atol: float,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write base + adapter merged into `out_dir` (weights + tokenizer) after checking the logits.

    check_conversations: a few chat conversations (ideally from the training data) rendered with the
    adapter folder's tokenizer. Returns {"max_abs_logit_diff", "atol", "checked", "qlora"}.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from model_store.loading import load_tokenizer

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if task not in TASKS:
        raise MergeError(f"task must be one of {TASKS}, got {task!r}")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MergeError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    if not check_conversations:
        raise MergeError("merge needs at least one conversation to compare logits on")
    tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = load_tokenizer(tok_dir)
    pad_id = tokenizer.pad_token_id if task == "seq_cls" else None
    inputs = _encode(tokenizer, check_conversations, device)

    # The reference: the adapter on the base exactly as it was trained (nf4 for QLoRA).
    reference = PeftModel.from_pretrained(
        _load(task, base_dir, four_bit=qlora, device=device, pad_token_id=pad_id), str(adapter_dir)
    )
    expected = _logits(reference, inputs)
    del reference

    base = _load(task, base_dir, four_bit=qlora, device=device, pad_token_id=pad_id)
    if qlora:
        base = base.dequantize()  # recipe B: plain nn.Linear with the nf4 values, so the merge is exact
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(torch.float32)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    merged.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    del merged, base

    # Reload with plain transformers, as the app and PPO will.
    auto = AutoModelForCausalLM if task == "causal_lm" else AutoModelForSequenceClassification
    reloaded = auto.from_pretrained(str(partial), dtype=torch.float32).to(device)
    got = _logits(reloaded, inputs)
    diff = max_logit_diff(expected, got)
    tolerance = atol
    result = {
        "max_abs_logit_diff": diff,
        "atol": tolerance,
        "checked": len(inputs),
        "qlora": qlora,
        "task": task,
    }
    if not diff <= tolerance:  # also catches NaN
        shutil.rmtree(partial, ignore_errors=True)
        raise MergeError(
            f"merged model differs from the adapter model: max |logit diff| {diff:.3g} > {tolerance:g} on "
            f"{len(inputs)} conversations; not saving it (check the adapter and the base model)"
        )
    (partial / "merge_check.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.merge", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", required=True, type=Path, help="the model folder the adapter was trained on"
    )
    parser.add_argument("--adapter", required=True, type=Path, help="LoRA adapter folder")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--task", choices=TASKS, default="causal_lm")
    parser.add_argument("--qlora", action="store_true", help="the adapter was trained on an nf4 base (CUDA)")
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--check", type=Path, help="JSONL with {'messages': [...]} rows to compare logits on")
    args = parser.parse_args(argv)
    from training.data import TrainingDataError, read_jsonl

    try:
        rows = read_jsonl(args.check) if args.check else []
        conversations = [r["messages"] for r in rows[:4] if "messages" in r] or [
            [{"role": "user", "content": "What does the merge check compare?"}]
        ]
        device = "cuda" if args.qlora else "cpu"
        result = merge_adapter(
            args.base,
            args.adapter,
            args.out,
            task=args.task,
            qlora=args.qlora,
            check_conversations=conversations,
            atol=args.atol,
            device=device,
        )
    except (MergeError, TrainingDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
