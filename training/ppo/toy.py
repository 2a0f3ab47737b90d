"""A tiny self-contained PPO setup for tests and the benchmark: nothing is downloaded.

A character-level tokenizer with a ChatML-like chat template, a random 2-layer Llama (hidden 64) as the
policy and a random Llama sequence classifier as the reward model, plus a prompts.jsonl. Random weights:
useful for speed, memory and "does the loop learn a toy reward", not for quality.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_toy_tokenizer(vocab_size: int = 128):
    """Characters 32..126 plus newline, ChatML specials: <|endoftext|>=0 (pad), <|im_start|>=1, <|im_end|>=2 (eos)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size must be >= {len(vocab)}")
    for i in range(len(vocab), vocab_size):  # filler ids so the vocabulary has the requested size
        vocab[f"<|x{i}|>"] = i
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, ignore_merges=True))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 4096
    return tok


def _llama_config(vocab_size: int, num_labels: int | None = None, initializer_range: float = 0.1):
    from model_store.loading import tiny_llama_config

    cfg = tiny_llama_config(
        vocab_size=vocab_size,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    if num_labels is not None:
        cfg.num_labels = num_labels
    return cfg


def build_toy_models(out_dir: Path, seed: int = 0, vocab_size: int = 128) -> tuple[Path, Path]:
    """Write out_dir/policy (LlamaForCausalLM) and out_dir/reward (LlamaForSequenceClassification). -> (policy, reward)."""
    import torch
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tok = build_toy_tokenizer(vocab_size)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(_llama_config(vocab_size))
    policy.generation_config.eos_token_id = 2
    policy.generation_config.pad_token_id = 0
    reward = LlamaForSequenceClassification(_llama_config(vocab_size, num_labels=1))
    paths = out_dir / "policy", out_dir / "reward"
    for model, path in zip((policy, reward), paths, strict=True):
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return paths


def toy_prompts(n: int = 16) -> list[list[dict]]:
    """Short chat prompts: a system line and a numbered question."""
    return [
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Question {i}: what is {i} plus {i % 7}?"},
        ]
        for i in range(n)
    ]


def write_toy_prompts(path: Path, n: int = 16) -> Path:
    """prompts.jsonl in the feedback export's format: one {"prompt": [messages]} per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in toy_prompts(n)))
    return path


def token_fraction_reward(token_id: int):
    """Toy reward: the fraction of response tokens equal to `token_id` (EOS excluded from neither side)."""
    import torch

    def reward(prompt_ids: list, response_ids: list):
        return torch.tensor([float((r == token_id).float().mean()) if len(r) else 0.0 for r in response_ids])

    return reward
