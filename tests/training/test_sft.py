"""SFT: completion-only labels from the prompt/completion format, a short run writes adapter + merged model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.training.conftest import write_export
from training.data import load_export
from training.sft import build_sft_trainer, train_sft


def test_loss_only_on_completion_tokens(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    data = load_export(write_export(tmp_path / "e", serving_format=True))  # THE serving prompt
    trainer = build_sft_trainer(tiny_cfg(), tiny_model_dir, data, tmp_path / "sft")
    tok = trainer.processing_class
    example = data.sft["train"][0]
    prompt_len = len(
        tok.apply_chat_template(
            example["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    assert (labels[:prompt_len] == -100).all()
    trained = labels[labels != -100]
    assert tok.decode(trained).startswith(
        "Paris [1]<|im_end|>"
    )  # the answer and its stop token, nothing else
    assert torch.equal(trained, ids[prompt_len : prompt_len + len(trained)])

    # The trainer's loss is the mean cross-entropy over the completion tokens only.
    model = trainer.model.eval()
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        logits = out.logits[0, :-1].float()
    targets = ids[1:]
    mask = labels[1:] != -100
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(out.loss, ce[mask].mean(), atol=1e-5)
    assert not torch.allclose(out.loss, ce.mean(), atol=1e-3)  # a full-sequence loss would differ


def test_short_run_writes_adapter_and_merged_model(
    tiny_model_dir: Path, export_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    result = train_sft(tiny_cfg(), model_dir=tiny_model_dir, data=load_export(export_dir), out_dir=out)
    assert result["status"] == "done"
    m = result["metrics"]
    assert m["steps"] == 2 and m["demonstrations_train"] == 4
    # 2 steps: model.compile auto leaves the layers eager and says why (training/layer_compile.py)
    assert not m["compile"]["compiled"] and m["compile"]["reason"].startswith("auto: off")
    # and the attention it trained with, and why (training/block_attention.py)
    assert m["attention"]["attention"] in {"sdpa", "causal_blocks"} and m["attention"]["reason"].startswith(
        "auto"
    )
    assert m["merge"]["max_abs_logit_diff"] <= 1e-3
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "plots" / "sft_loss.png").stat().st_size > 1000
    assert len(json.loads((out / "metrics.json").read_text())["log_history"]) >= 2
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])  # the LoRA moved the weights


def test_too_few_demonstrations_skip_with_a_reason(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    data = load_export(write_export(tmp_path / "e", demos=1))
    result = train_sft(tiny_cfg(), model_dir=tiny_model_dir, data=data, out_dir=tmp_path / "sft")
    assert result["status"] == "skipped"
    assert "1 demonstrations" in result["reason"] and "min_demonstrations=2" in result["reason"]
    assert not (tmp_path / "sft").exists()
