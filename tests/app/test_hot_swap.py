"""The running app follows `current`: a publish or rollback is picked up before the next request."""

from __future__ import annotations

from pathlib import Path

import torch

from app.backends.base import Decoding
from app.generator import Generator
from model_store.registry import ModelRegistry


def _perturbed_copy(src: Path, dst: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def test_generator_switches_on_publish_and_rollback(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    reg = ModelRegistry(ragqa_home / "models")
    reg.publish_folder(tiny_llama_dir, {"kind": "base"})
    gen = Generator(reg, dtype="float32")
    first = gen.current()
    assert first.version == "v0001"
    assert gen.current() is first  # no reload while `current` is unchanged

    reg.publish_folder(_perturbed_copy(tiny_llama_dir, tmp_path / "v2"), {"kind": "rlhf"})
    in_flight = first  # a request that started before the publish keeps its model object
    second = gen.current()
    assert second.version == "v0002" and second is not first
    w1 = in_flight.model.model.embed_tokens.weight
    w2 = second.model.model.embed_tokens.weight
    assert not torch.equal(w1, w2)  # really the new weights
    messages = [{"role": "user", "content": "hello"}]
    assert in_flight.sample(messages, 2, max_new_tokens=4, seed=1)[0].num_tokens >= 1  # old one still works

    reg.rollback()
    assert gen.current().version == "v0001"


def test_repetition_penalty_ignores_the_prompt(ragqa_home: Path, tiny_llama_dir: Path) -> None:
    """The passages are in the prompt; penalising them made the model avoid the very facts it should copy."""
    reg = ModelRegistry(ragqa_home / "models")
    reg.publish_folder(tiny_llama_dir, {"kind": "base"})
    model = Generator(reg, dtype="float32").current()
    kwargs = model._generate_kwargs(Decoding(16, 10.0, 1.1), prompt_len=37)
    assert "repetition_penalty" not in kwargs
    (processor,) = kwargs["logits_processor"]
    assert processor.penalty == 1.1 and int(processor.prompt_ignore_length) == 37
    scores = torch.zeros(1, 10)
    ids = torch.tensor([[3] * 37 + [5]])  # token 3 only in the prompt, token 5 in the answer
    scores[0, 3] = scores[0, 5] = 2.0
    out = processor(ids, scores.clone())
    assert out[0, 3] == 2.0 and out[0, 5] < 2.0
    assert "logits_processor" not in model._generate_kwargs(Decoding(16, 10.0, 1.0), prompt_len=37)
