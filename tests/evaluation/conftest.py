"""Fixtures for the evaluation tests: a tiny random Llama with a small trained tokenizer, registered as a version.

The tokenizer is a byte-level BPE trained in milliseconds on the fixture texts, with ChatML special tokens and a
chat template, so the whole ask path (chat template, generation, streaming) runs as with SmolLM2, only faster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _fixture_texts() -> list[str]:
    texts = []
    for path in FIXTURES.iterdir():
        texts.extend(path.read_text(encoding="utf-8").splitlines())
    return texts + ["Passages: Question: source The documents do not contain the answer. [1] [2] [3] [4]"]


def build_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_fixture_texts(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def _llama_config(tok: Any, **extra: Any) -> Any:
    from model_store.loading import tiny_llama_config

    return tiny_llama_config(tok, **extra)


def build_tiny_lm(out: Path, seed: int = 0, **config: Any) -> Path:
    """`config`: LlamaConfig fields (initializer_range=0.2 gives answers that depend on the prompt)."""
    import torch
    from transformers import LlamaForCausalLM

    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    LlamaForCausalLM(_llama_config(tok, **config)).save_pretrained(out)
    return out


def build_tiny_rm(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    tok = build_tokenizer(out)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(_llama_config(tok, num_labels=1)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_lm_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny random Llamas (different seeds) sharing one tokenizer."""
    root = tmp_path_factory.mktemp("tiny-lm")
    return build_tiny_lm(root / "a", seed=0), build_tiny_lm(root / "b", seed=1)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_rm(tmp_path_factory.mktemp("tiny-rm"))


@pytest.fixture
def tiny_registry(ragqa_home: Path, tiny_lm_dirs: tuple[Path, Path]) -> Path:
    """RAGQA_HOME with v0001 and v0002 (tiny models), current = v0001, and short answers for speed."""
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(ragqa_home / "models")
    registry.publish_folder(tiny_lm_dirs[0], {"kind": "base"})
    registry.publish_folder(tiny_lm_dirs[1], {"kind": "test"}, make_current=False)
    (ragqa_home / "config.yaml").write_text(json.dumps({"max_new_tokens": 8, "k": 3}))
    return ragqa_home / "models"
