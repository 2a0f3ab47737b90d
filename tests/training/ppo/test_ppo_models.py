"""The shared-base actor-critic: both adapters train, the reference is the frozen base, RM pooling is right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_store.reward import load_reward_model, score_with_reward_model
from training.ppo.actor_critic import POLICY, VALUE, build_actor_critic
from training.ppo.config import PPOConfig

CPU = torch.device("cpu")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [1, 4, 5, 6, 7, 8, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    return ids, mask


def _lora_b_grads(model, adapter: str) -> list[torch.Tensor | None]:
    return [p.grad for n, p in model.named_parameters() if "lora_B" in n and f".{adapter}." in n]


def test_both_adapters_and_value_head_get_gradients(toy_models: tuple[Path, Path]) -> None:
    model = build_actor_critic(PPOConfig(bf16=False, lora_r=4, lora_alpha=8), toy_models[0], CPU)
    with torch.no_grad():  # a zero value head passes no gradient back to the value LoRA; give it weights
        model.value_head.weight.normal_()
    ids, mask = _inputs()
    logits, values = model(ids, mask, 3)
    assert logits.shape == (2, 3, 128) and values.shape == (2, 3)
    (logits.float().logsumexp(-1).sum() + values.sum()).backward()
    for adapter in (POLICY, VALUE):
        grads = _lora_b_grads(model, adapter)
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), adapter
    assert model.value_head.weight.grad.abs().sum() > 0


def test_plain_set_adapter_would_freeze_the_policy(toy_models: tuple[Path, Path]) -> None:
    """The peft trap our use_adapter guards against: without re-enabling, the policy LoRA gets no gradient."""
    model = build_actor_critic(PPOConfig(bf16=False, lora_r=4, lora_alpha=8), toy_models[0], CPU)
    ids, mask = _inputs()
    model.lm.set_adapter(POLICY)
    logits = model._response_logits(model._hidden(ids, mask), 3)
    model.lm.set_adapter(VALUE)
    logits.float().logsumexp(-1).sum().backward()
    assert all(g is None for g in _lora_b_grads(model, POLICY))


def test_reference_is_the_untouched_base(toy_models: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    model = build_actor_critic(PPOConfig(bf16=False, lora_r=4, lora_alpha=8), toy_models[0], CPU)
    with torch.no_grad():  # move the policy away from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    ids, mask = _inputs()
    base = AutoModelForCausalLM.from_pretrained(str(toy_models[0]))
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        expected = base(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -4:-1]
        ref = model.ref_logits(ids, mask, 3)
        policy = model.policy_logits(ids, mask, 3)
    assert torch.allclose(ref, expected, atol=1e-5)  # same weights; only the matmul shapes differ
    assert (policy - ref).abs().max() > 1e-3


def test_reward_model_scores_batched_like_single_unpadded_sequences(toy_models: tuple[Path, Path]) -> None:
    rm, tok = load_reward_model(toy_models[1], bf16=False, device=CPU)
    assert tok.pad_token == "<|endoftext|>"
    prompts = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a much longer question here"}],
    ]
    responses = ["yes", "no, and a longer answer that ends"]
    batched = score_with_reward_model(rm, tok, prompts, responses, batch_size=2, device=CPU)
    for prompt, response, score in zip(prompts, responses, batched, strict=True):
        text = tok.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        assert text.endswith("<|im_end|>\n")  # the template closes the turn; pooling lands on "\n"
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            single = rm(**enc).logits[0, 0]
        assert score.item() == pytest.approx(single.item(), abs=1e-5)


def test_lm_head_runs_only_on_response_positions(toy_models: tuple[Path, Path]) -> None:
    """Rollout scoring and updates project only the R response positions through the LM head, never [B, T, V]."""
    model = build_actor_critic(PPOConfig(bf16=False, lora_r=4, lora_alpha=8), toy_models[0], CPU)
    rows: list[tuple[int, ...]] = []
    head = model.lm.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: rows.append(tuple(args[0].shape[:-1])))
    ids, mask = _inputs()
    model(ids, mask, 3)  # the update's policy + value forward
    with torch.no_grad():
        model.ref_logits(ids, mask, 3)
    assert rows == [(2, 3), (2, 3)]  # policy and reference: [B, R] rows; the value pass uses no head
