"""Batched greedy generation (`ServedModel.generate_batch`) gives each prompt the answer it gets alone.

A tiny random Llama in fp32 with weights large enough (initializer_range 0.2) that its greedy tokens depend on the
prompt, and the EOS embedding scaled so that some answers end early and others run to max_new_tokens: a batch
then holds rows of different prompt lengths (left padding) that finish at different steps (padding after EOS).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.backends.base import GenerationStats
from app.backends.transformers_lm import TransformersModel
from tests.evaluation.conftest import build_tokenizer

QUESTIONS = (
    "When?",
    "When did the Normans arrive in Normandy?",
    "What is the capital of France and why is it there?",
    "Who wrote it",
    "Passages: [1] The Normans were a people. Question: who were the Normans?",
    "source of the river",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> TransformersModel:
    import torch
    from transformers import LlamaForCausalLM

    from model_store.loading import tiny_llama_config

    tok = build_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok, initializer_range=0.2)).eval()
    with torch.no_grad():  # EOS becomes the greedy pick in some states: answers of different lengths
        model.model.embed_tokens.weight[tok.eos_token_id] *= 2.0
    version = SimpleNamespace(name="v0001", manifest={}, path=Path("."))
    return TransformersModel(version, model, tok)


def _conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def _alone(
    served: TransformersModel, messages: list[dict[str, str]], **limits: Any
) -> tuple[str, GenerationStats]:
    stats = GenerationStats()
    text = "".join(served.stream(messages, stats=stats, **limits)).strip()
    return text, stats


def test_batched_answers_equal_the_answers_alone(served: TransformersModel) -> None:
    limits = {"max_new_tokens": 16, "repetition_penalty": 1.1}
    batched = served.generate_batch(_conversations(), **limits)
    alone = [_alone(served, m, **limits) for m in _conversations()]
    # The case is the hard one: prompts of several lengths, answers ending at different steps, and text.
    assert len({served.count_tokens(m) for m in _conversations()}) == len(QUESTIONS)
    assert {s.finish_reason for _t, s in alone} == {"stop", "length"}
    assert len({s.completion_tokens for _t, s in alone}) >= 3
    assert sum(bool(t) for t, _s in alone) >= 4
    for got, (text, stats) in zip(batched, alone, strict=True):
        assert got.text == text
        assert got.finish_reason == stats.finish_reason
        assert got.completion_tokens == stats.completion_tokens
        assert got.prompt_tokens == stats.prompt_tokens


def test_the_comparison_detects_a_wrong_mask(served: TransformersModel) -> None:
    """The same padded batch attending to its pads (mask of ones) answers differently: the test above is not
    passing because padding never matters for this model."""
    import torch

    prompts = [served.codec.prompt_ids(m) for m in _conversations()]
    width = max(len(p) for p in prompts)
    pad = served.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    with torch.inference_mode():
        out = served.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=served.tokenizer.eos_token_id,
            pad_token_id=pad,
        )
    eos = served.tokenizer.eos_token_id
    wrong = []
    for row in out[:, width:].tolist():
        row = row[: row.index(eos)] if eos in row else row
        wrong.append(served.tokenizer.decode(row, skip_special_tokens=True).strip())
    right = [
        g.text for g in served.generate_batch(_conversations(), max_new_tokens=16, repetition_penalty=1.0)
    ]
    assert wrong != right


def test_empty_batch_and_the_one_by_one_fallback(served: TransformersModel) -> None:
    """Backends without a batched generate answer in a loop over `_stream` (the base class)."""
    from app.backends.base import ServedModel

    assert served.generate_batch([]) == []
    looped = ServedModel._generate_batch(served, _conversations()[:3], served_decoding(16))
    batched = served.generate_batch(_conversations()[:3], max_new_tokens=16, repetition_penalty=1.1)
    assert looped == batched


def served_decoding(max_new_tokens: int) -> Any:
    from app.backends.base import Decoding

    return Decoding(max_new_tokens=max_new_tokens, repetition_penalty=1.1)
