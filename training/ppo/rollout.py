"""Rollouts: tokenise stored prompts, sample responses, score them, and hold everything in one container.

Shapes: B = sequences, Q = prompt length (left-padded), R = response length (right-padded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

RewardFn = Callable[[list[Tensor], list[Tensor]], Tensor]
"""(prompt token ids without padding, response ids up to and including EOS) -> scores [B]."""


class PromptError(ValueError):
    """The prompts are unusable (empty file, bad JSON, no chat messages, all too long)."""


@dataclass
class Rollout:
    """One PPO batch. Filled in two stages: sampling/scoring (rollout.py), then rewards/advantages (trainer)."""

    query_ids: Tensor  # [B, Q] long, prompt tokens, left-padded
    query_mask: Tensor  # [B, Q] long, 1 on prompt tokens
    response_ids: Tensor  # [B, R] long, sampled tokens, pad after the first EOS
    response_mask: Tensor  # [B, R] float, 1 up to and including the first EOS
    ends_with_eos: Tensor  # [B] bool, the response emitted EOS within max_new_tokens
    scores: Tensor  # [B] float, reward-model (or reward_fn) score before penalties
    logprobs: Tensor  # [B, R] float, log pi_old(token) under the sampling policy (temperature applied)
    ref_logprobs: Tensor  # [B, R] float, log pi_ref(token) with adapters disabled
    values: Tensor  # [B, R] float, critic values before each response token
    rewards: Tensor | None = None  # [B, R] float, KL-penalised per-token rewards, score on the last token
    advantages: Tensor | None = None  # [B, R] float, GAE advantages (whitened if configured)
    returns: Tensor | None = None  # [B, R] float, advantages + values (targets of the critic)

    @property
    def input_ids(self) -> Tensor:
        """[B, Q + R] prompt and response, as the model reads them."""
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """[B, Q + R] 1 on prompt tokens and on the valid response tokens."""
        return torch.cat([self.query_mask, self.response_mask.long()], dim=1)

    def select(self, index: Tensor) -> Rollout:
        """Rows `index` ([b] long) of every field: the mini-batch view used by the PPO epochs."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: (v[index] if v is not None else None) for k, v in values.items()})


def read_prompts_jsonl(path: Path) -> list[list[dict]]:
    """Read the feedback export's prompts.jsonl: one `{"prompt": [chat messages], ...}` per line."""
    import json

    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompts file {path} does not exist; export feedback first")
    prompts: list[list[dict]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{number} is not valid JSON: {exc}") from exc
        messages = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise PromptError(f'{path}:{number} needs a "prompt" list of chat messages with "role"/"content"')
        prompts.append(messages)
    if not prompts:
        raise PromptError(f"{path} holds no prompts")
    return prompts


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[list[dict]], max_tokens: int
) -> tuple[list[int], list[list[int]]]:
    """Render each conversation with the chat template (generation prompt added) and tokenise it.

    Returns (indices of the prompts kept, their token ids); prompts longer than max_tokens are skipped.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise PromptError("the policy tokenizer has no chat template; PPO renders prompts with it")
    kept, ids = [], []
    for i, messages in enumerate(prompts):
        tokens = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if len(tokens) <= max_tokens:
            kept.append(i)
            ids.append(list(tokens))
    if not ids:
        raise PromptError(f"every prompt is longer than max_prompt_tokens={max_tokens}; raise it")
    return kept, ids


def left_pad(sequences: Sequence[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to one length. -> (ids [B, Q] long, mask [B, Q] long)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def response_mask_from_eos(response_ids: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask up to and including the first EOS. response_ids: [B, R] -> (mask [B, R] float, ends_with_eos [B] bool)."""
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= response_ids == eos
    # Number of EOS tokens strictly before each position: 0 means "not yet ended".
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (before == 0).float(), is_eos.any(dim=1)


def sample_responses(
    model: Any,
    query_ids: Tensor,
    query_mask: Tensor,
    generation_config: Any,
    eos_ids: Sequence[int],
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample with the policy. -> (response_ids [B, R] with pad after EOS, mask [B, R], ends_with_eos [B])."""
    output = model.generate(query_ids, query_mask, generation_config)
    response = output[:, query_ids.shape[1] :]
    mask, ended = response_mask_from_eos(response, eos_ids)
    response = torch.where(mask.bool(), response, torch.full_like(response, pad_id))
    return response, mask, ended
