"""Training speed: SFT computes logits only at the answer tokens (same loss and gradients as the full-logits
cross-entropy), the reward model computes no LM head, and the batching settings reach the trainers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tests.training.conftest import write_export
from training import answer_loss
from training.data import load_export


def tiny_llama(vocab: int = 97) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def batch_with_answers(vocab: int) -> dict[str, torch.Tensor]:
    """Two right-padded prompt+answer rows: labels -100 on the prompt and the padding."""
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 19:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 15:24] = ids[0, 15:24]
    labels[1, 12:19] = ids[1, 12:19]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def full_logits_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
    )


@pytest.mark.parametrize("chunk_rows", [1024, 5])  # one head chunk, and several (recomputed in backward)
def test_answer_only_loss_equals_full_logits_loss_values_and_grads(monkeypatch, chunk_rows: int) -> None:
    monkeypatch.setattr(answer_loss, "HEAD_CHUNK_ROWS", chunk_rows)
    model = tiny_llama()
    batch = batch_with_answers(97)
    reference = full_logits_loss(model, batch)
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    loss, count = answer_loss.answer_only_loss(model, batch)
    loss.backward()
    assert int(count) == 9 + 7  # the labelled tokens (each has a previous position)
    assert torch.allclose(loss, reference, atol=1e-5, rtol=0)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, expected[name], atol=1e-6, rtol=1e-4), name


def test_answer_only_loss_divides_by_the_trainers_token_count() -> None:
    model = tiny_llama()
    batch = batch_with_answers(97)
    loss, count = answer_loss.answer_only_loss(model, batch)
    accumulated, _ = answer_loss.answer_only_loss(
        model, batch, num_items_in_batch=torch.tensor(4 * int(count))
    )
    assert torch.allclose(accumulated * 4, loss, atol=1e-6)


def lm_head_rows(model: torch.nn.Module) -> tuple[list[int], object]:
    """Rows each call of the LM head projects (a hook on its input), and the hook handle."""
    rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    return rows, handle


def test_sft_trainer_never_materialises_full_logits(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    from training.sft import build_sft_trainer

    data = load_export(write_export(tmp_path / "e"))
    trainer = build_sft_trainer(tiny_cfg(), tiny_model_dir, data, tmp_path / "sft")
    assert isinstance(trainer, answer_loss.AnswerOnlySFTTrainer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < answer_tokens < batch["input_ids"].numel() // 4  # prompts dominate, as in RAG
    plain = trainer.model.get_base_model()
    rows, handle = lm_head_rows(plain)
    calls: list[str] = []
    # The stock (fused) forward of the causal LM must not run either: it projects every position on CPU.
    plain.register_forward_hook(lambda *a: calls.append("causal_lm_forward"))
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the step is run alone here
    try:
        trainer.model.train()
        loss = trainer.training_step(trainer.model, dict(batch))
    finally:
        handle.remove()
    # forward, then the recomputation of the head chunk in backward: only the answer rows, both times
    assert rows == [answer_tokens, answer_tokens] and calls == []
    assert torch.isfinite(loss)
    # ... and the loss is the mean cross-entropy over the answer tokens of the full logits
    with torch.no_grad():
        trainer.model.eval()
        expected = full_logits_loss(trainer.model, batch)
        got = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(got, expected, atol=1e-5)
    assert not any("accuracy" in k or "entropy" in k for k in trainer._metrics["train"])


@pytest.mark.parametrize(("setting", "dtype"), [("true", torch.bfloat16), ("false", torch.float32)])
def test_sft_body_runs_in_the_trainers_precision(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg, setting: str, dtype: torch.dtype
) -> None:
    """The loss calls the decoder body directly, outside the forward accelerate wraps in autocast: the trainer's
    precision must still reach the body's matmuls (it did not: "bf16" SFT ran in fp32)."""
    from training.sft import build_sft_trainer

    data = load_export(write_export(tmp_path / "e"))
    trainer = build_sft_trainer(tiny_cfg(f"model.bf16={setting}"), tiny_model_dir, data, tmp_path / "sft")
    assert trainer.args.bf16 is (setting == "true")
    seen: list[torch.dtype] = []
    layer = trainer.model.get_base_model().model.layers[0].mlp.up_proj
    layer.base_layer.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    lora_inputs: list[torch.dtype] = []
    lora_a = next(iter(layer.lora_A.values()))
    lora_a.register_forward_pre_hook(lambda m, a: lora_inputs.append(a[0].dtype))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    assert torch.isfinite(trainer.training_step(trainer.model, dict(batch)))
    assert seen and set(seen) == {dtype}
    # the adapter gets the layer's input as it is: PEFT's cast to the fp32 adapter weights is off under autocast
    # (autocast would cast that fp32 copy straight back to bf16), and back on after the step
    assert lora_inputs and set(lora_inputs) == {dtype}
    assert getattr(layer, "cast_input_dtype_enabled", True)
    # The frozen base is stored in the compute dtype (no fp32 copy cast on every use); what trains stays fp32.
    assert layer.base_layer.weight.dtype == dtype and not layer.base_layer.weight.requires_grad
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trained and {p.dtype for p in trained} == {torch.float32}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_bf16_sft_trains_with_checkpointing_and_lora_dropout(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    """PEFT's LoRA input casts are off for the whole step: gradient checkpointing recomputes the forward in the
    backward, and a dropout mask recomputed with the casts back on (fp32, saved bf16) made torch's checkpoint fail."""
    from training.sft import build_sft_trainer

    data = load_export(write_export(tmp_path / "e"))
    cfg = tiny_cfg(
        "model.bf16=true", "sft.gradient_checkpointing=true", "lora.dropout=0.1", "sft.max_steps=1"
    )
    trainer = build_sft_trainer(cfg, tiny_model_dir, data, tmp_path / "sft")
    assert trainer.args.bf16 and trainer.args.activation_checkpointing
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    out = trainer.train()  # train() is what turns the checkpointing on
    assert out.global_step == 1 and trainer.model.get_base_model().is_gradient_checkpointing
    moved = [
        n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])
    ]
    assert moved


def test_dpo_keeps_a_bf16_base_with_fp32_adapters(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    """DPO (and KTO, same loader call) store the frozen base as SFT does; 4-bit and fp32 compute keep the default."""
    from training.config import frozen_base_dtype
    from training.dpo import build_dpo_trainer

    cfg = tiny_cfg("model.bf16=true")
    assert frozen_base_dtype(cfg, "cpu", four_bit=True) is None
    assert frozen_base_dtype(tiny_cfg("model.bf16=false"), "cpu", four_bit=False) is None
    trainer, _ = build_dpo_trainer(
        cfg, tiny_model_dir, load_export(write_export(tmp_path / "e")), tmp_path / "d"
    )
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}


def test_reward_model_computes_no_lm_head(tmp_path: Path, tiny_cfg) -> None:
    from training.ppo.toy import build_toy_tokenizer
    from training.reward import build_reward_trainer

    # vocabulary 200: no other projection of the model has 200 outputs, so a hook can tell the LM head apart
    tokenizer = build_toy_tokenizer(128)
    tiny_llama(vocab=200).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    pairs = load_export(write_export(tmp_path / "e")).pairs["train"]
    trainer, _ = build_reward_trainer(tiny_cfg(), tmp_path / "base", pairs, tmp_path / "rm")
    vocab = trainer.model.config.vocab_size
    assert trainer.model.get_base_model().get_output_embeddings() is None  # no LM head module at all
    outputs: list[int] = []
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, a, out: outputs.append(out.shape[-1]))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    trainer.training_step(trainer.model, dict(batch))
    assert (
        outputs and vocab not in outputs and 1 in outputs
    )  # the score head (1 output), never the vocabulary


def test_length_grouping_reaches_the_trainers(tiny_cfg, tmp_path: Path) -> None:
    from training.config import ConfigError, trainer_kwargs

    cfg = tiny_cfg()
    assert cfg.sft.group_by_length and cfg.reward.group_by_length
    assert trainer_kwargs(cfg.sft, cfg, "cpu", tmp_path)["train_sampling_strategy"] == "group_by_length"
    off = tiny_cfg("sft.group_by_length=false")
    assert "train_sampling_strategy" not in trainer_kwargs(off.sft, off, "cpu", tmp_path)  # TRL's default
    assert off.reward.group_by_length  # per stage
    assert not cfg.dpo.group_by_length and not cfg.kto.group_by_length
    with pytest.raises(ConfigError, match="dpo.group_by_length"):
        tiny_cfg("dpo.group_by_length=true")


def test_reward_batches_are_grouped_by_pair_length(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from training.pair_batching import pair_token_lengths
    from training.reward import build_reward_trainer

    pairs = load_export(write_export(tmp_path / "e", pairs=8)).pairs["train"]
    trainer, _ = build_reward_trainer(tiny_cfg(), tiny_model_dir, pairs, tmp_path / "rm")
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sampler.lengths == pair_token_lengths(trainer.train_dataset)
    assert sorted(sampler) == list(range(len(trainer.train_dataset)))  # every pair once
    plain, _ = build_reward_trainer(
        tiny_cfg("reward.group_by_length=false"), tiny_model_dir, pairs, tmp_path / "r2"
    )
    assert not isinstance(plain._get_train_sampler(), LengthGroupedSampler)
