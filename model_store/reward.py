"""THE reward-model scorer: (prompt, answer) pairs -> scores, with one pad-token rule and one pooling.

Used by the reward stage's held-out metrics, PPO's rollouts, the retrain gate, `ragqa eval-rm` (pair accuracy),
`ragqa compare` (win-rate) and the loop benchmark. The text scored is the reward model tokenizer's chat template
over prompt + answer, the same rendering TRL's RewardTrainer trains on; a tokenizer without a chat template gets
the Anthropic HH text form ("\\n\\nHuman: ...\\n\\nAssistant: ...").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from model_store.errors import ModelStoreError
from model_store.registry import ModelRegistry, ModelVersion

Messages = Sequence[dict[str, str]]


class RewardModelError(ModelStoreError):
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


def use_reward_padding(tokenizer: Any) -> Any:
    """THE pad-token rule for reward models (training, PPO and evaluation all go through it).

    Llama-style classifiers pool at the last token whose id differs from pad_token_id; SmolLM2 pads with
    `<|im_end|>` = EOS, which is also the last real token of a rendered turn, so a text would be scored one token
    early. `<|endoftext|>` (when the vocabulary has it and it differs from EOS) never ends a scored text. Right
    padding, so the pooled position is the last real token. Returns the tokenizer (changed in place).
    """
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab and vocab["<|endoftext|>"] != tokenizer.eos_token_id:
        tokenizer.pad_token = "<|endoftext|>"
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def render_hh(messages: Messages) -> str:
    names = {"user": "Human", "assistant": "Assistant", "system": "Human"}
    return "".join(f"\n\n{names.get(m['role'], 'Human')}: {m['content']}" for m in messages)


def render_pair(tokenizer: Any, prompt: Messages, answer: str) -> str:
    """The text a reward model scores: its chat template over prompt + answer (as TRL's RewardTrainer renders
    training pairs, so the closing `<|im_end|>\\n` comes from the template, not from a sampled EOS); the HH text
    form for a tokenizer without a template."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return render_hh(messages)


def load_reward_model(
    path: Path | str, *, bf16: bool = False, dtype: Any = None, device: Any = "cpu"
) -> tuple[Any, Any]:
    """A frozen AutoModelForSequenceClassification folder (a merged RewardTrainer output) and its tokenizer.

    `dtype` (a torch dtype, or "auto"/"float32"/"bfloat16" as model_store.loading.pick_dtype reads it) wins
    over `bf16`; the model is in eval mode with no gradients.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from model_store.loading import pick_dtype

    if isinstance(dtype, str):
        dtype = pick_dtype(dtype)
    path = Path(path).expanduser()
    check_reward_model_folder(path)
    try:
        tokenizer = use_reward_padding(AutoTokenizer.from_pretrained(str(path)))
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype or (torch.bfloat16 if bf16 else torch.float32)
        )
    except (OSError, ValueError) as e:
        raise RewardModelError(f"cannot load the reward model from {path}: {e}") from e
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def score_with_reward_model(
    reward_model: Any,
    reward_tokenizer: Any,
    prompts: Sequence[Messages],
    responses: Sequence[str],
    batch_size: int,
    device: Any,
    *,
    max_length: int | None = None,
) -> Any:
    """Score (prompt messages, response text) pairs. -> Tensor [B] fp32 on the CPU, in input order.

    Pooling uses the attention mask (last real token of a right-padded row), not `pad_token_id`, so a pad token
    equal to EOS cannot shift the pooled position. With `max_length` a longer text loses its start (truncation
    on the left): the score is read at the last token, so the answer must stay.
    """
    import torch

    texts = [render_pair(reward_tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    head = getattr(reward_model, "score", None) or getattr(reward_model, "classifier", None)
    truncate: dict[str, Any] = {}
    if max_length is not None:
        reward_tokenizer.truncation_side = "left"
        truncate = {"truncation": True, "max_length": max_length}
    scores = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = reward_tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                add_special_tokens=False,
                **truncate,
            ).to(device)
            # input_ids [b, seq] -> hidden [b, seq, H] -> pooled at `last` [b, H] -> logits [b, 1]
            last = enc["attention_mask"].sum(dim=1) - 1
            rows = torch.arange(last.shape[0], device=last.device)
            if head is not None:
                hidden = backbone(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state
                logits = head(hidden[rows, last])
            else:  # unknown head name: the model's own pooling (pad id set to a non-EOS token above)
                logits = reward_model(**enc).logits
            scores.append(logits[:, 0].float())
    return torch.cat(scores).cpu() if scores else torch.zeros(0)


class RewardScorer:
    """A loaded reward model. `score(prompts, answers)` -> one float per pair, batched by similar length."""

    def __init__(
        self, path: Path | str, *, max_length: int = 1024, batch_size: int = 8, dtype: Any = "auto"
    ) -> None:
        self.path = Path(path).expanduser()
        self.model, self.tokenizer = load_reward_model(self.path, dtype=dtype)
        self.max_length = max_length
        self.batch_size = batch_size

    def render(self, prompt: Messages, answer: str) -> str:
        return render_pair(self.tokenizer, prompt, answer)

    def score(
        self, prompts: Sequence[Messages], answers: Sequence[str], progress: bool = False
    ) -> list[float]:
        # Similar lengths in one batch waste less padding; results go back in input order.
        lengths = [len(self.render(p, a)) for p, a in zip(prompts, answers, strict=True)]
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        scores = [0.0] * len(order)
        batches = range(0, len(order), self.batch_size)
        for start in tqdm(batches, desc="reward model", unit="batch", disable=not progress):
            idx = order[start : start + self.batch_size]
            batch = score_with_reward_model(
                self.model,
                self.tokenizer,
                [prompts[i] for i in idx],
                [answers[i] for i in idx],
                self.batch_size,
                self.model.device,
                max_length=self.max_length,
            )
            for i, s in zip(idx, batch.tolist(), strict=True):
                scores[i] = float(s)
        return scores


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
