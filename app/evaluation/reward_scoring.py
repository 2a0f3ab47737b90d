"""Score (prompt, answer) pairs with a reward model saved as an AutoModelForSequenceClassification folder.

Used by `ragqa eval-rm` (pair accuracy) and `ragqa compare` (win-rate). The text scored is the reward model
tokenizer's chat template over prompt + answer, the same rendering TRL's RewardTrainer trains on; a tokenizer
without a chat template gets the Anthropic HH text form ("\\n\\nHuman: ...\\n\\nAssistant: ...").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from training.registry import ModelRegistry, ModelVersion

Messages = Sequence[dict[str, str]]


class RewardModelError(RuntimeError):
    """No usable reward model; the message says where one was looked for."""


def reward_model_of(version: ModelVersion) -> Path | None:
    """The reward model a version's manifest records (the retrain that produced it), if it still exists.

    Looks at `reward_model` (a path, or a dict with `path`) and then a `reward_model/` folder inside the version.
    """
    entry = version.manifest.get("reward_model")
    if isinstance(entry, dict):
        entry = entry.get("path")
    candidates = [Path(entry)] if isinstance(entry, str) and entry else []
    if candidates and not candidates[0].is_absolute():
        candidates = [version.path / candidates[0], version.path.parent.parent / candidates[0]]
    candidates.append(version.path / "reward_model")
    for path in candidates:
        if (path / "config.json").is_file():
            return path
    return None


def default_reward_model(registry: ModelRegistry) -> Path | None:
    """The reward model recorded by the current version, else by the newest version that records one."""
    current = registry.current()
    versions = ([current] if current is not None else []) + list(reversed(registry.versions()))
    for version in versions:
        found = reward_model_of(version)
        if found is not None:
            return found
    return None


def check_reward_model_folder(path: Path) -> None:
    config = path / "config.json"
    if not config.is_file():
        raise RewardModelError(
            f"{path} is not a model folder (no config.json); give --rm a reward model folder"
        )
    archs = json.loads(config.read_text()).get("architectures") or []
    if archs and not any("SequenceClassification" in a for a in archs):
        raise RewardModelError(
            f"{path} holds a {archs[0]}, not a sequence-classification reward model; give --rm the reward model"
        )


def render_hh(messages: Messages) -> str:
    names = {"user": "Human", "assistant": "Assistant", "system": "Human"}
    return "".join(f"\n\n{names.get(m['role'], 'Human')}: {m['content']}" for m in messages)


class RewardScorer:
    """A loaded reward model. `score(prompts, answers)` -> one float per pair, batched, in bf16 where fast."""

    def __init__(self, path: Path | str, *, max_length: int = 1024, batch_size: int = 8) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from app.generator import pick_dtype

        self.path = Path(path).expanduser()
        check_reward_model_folder(self.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(self.path), dtype=pick_dtype("auto"), num_labels=1
            )
        except (OSError, ValueError) as e:
            raise RewardModelError(f"cannot load the reward model from {self.path}: {e}") from e
        self.model.eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self._set_padding()
        self._torch = torch

    def _set_padding(self) -> None:
        """Pad with a token that never ends a scored text, so pooling at the last non-pad token is right.

        SmolLM2 pads with <|im_end|> = eos, which is also the last real token of some texts (STACK-NOTES §4);
        <|endoftext|> is used instead when the vocabulary has it.
        """
        tok = self.tokenizer
        vocab = tok.get_vocab()
        if "<|endoftext|>" in vocab and vocab["<|endoftext|>"] != tok.eos_token_id:
            tok.pad_token = "<|endoftext|>"
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        tok.truncation_side = "left"  # keep the answer: the score is read at the last token
        self.model.config.pad_token_id = tok.pad_token_id

    def render(self, prompt: Messages, answer: str) -> str:
        messages = [*prompt, {"role": "assistant", "content": answer}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return render_hh(messages)

    def score(
        self, prompts: Sequence[Messages], answers: Sequence[str], progress: bool = False
    ) -> list[float]:
        texts = [self.render(p, a) for p, a in zip(prompts, answers, strict=True)]
        # Similar lengths in one batch waste less padding; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        scores = [0.0] * len(texts)
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="reward model", unit="batch", disable=not progress):
            idx = order[start : start + self.batch_size]
            for i, s in zip(idx, self._score_texts([texts[i] for i in idx]), strict=True):
                scores[i] = s
        return scores

    def _score_texts(self, texts: list[str]) -> list[float]:
        """One forward pass: input_ids (batch, seq) -> logits (batch, 1) -> floats."""
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.model.device)
        with self._torch.inference_mode():
            logits = self.model(**enc).logits
        return [float(x) for x in logits[:, 0].float().tolist()]


def load_scorer(
    path: Path | str | None, registry: ModelRegistry | None, *, required: bool
) -> RewardScorer | None:
    """Load `path`, else the registry's recorded reward model; None (or an error if `required`) when none."""
    found = Path(path).expanduser() if path else (default_reward_model(registry) if registry else None)
    if found is None:
        if required:
            raise RewardModelError(
                "no reward model given and none recorded in the model registry; pass --rm PATH "
                "(a folder saved by `ragqa retrain` or any AutoModelForSequenceClassification folder)"
            )
        return None
    if not found.exists():
        raise RewardModelError(f"reward model {found} does not exist")
    return RewardScorer(found)


def describe(scorer: RewardScorer | None) -> dict[str, Any] | None:
    return None if scorer is None else {"path": str(scorer.path), "max_length": scorer.max_length}
