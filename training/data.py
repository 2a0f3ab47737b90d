"""Read a feedback export (feedback_store/export.py) into the shapes the trainers take.

An export folder holds `manifest.json` (snapshot_id, counts) and, per kind and split,
`{preferences,sft,prompts,unpaired}.{train,test}.jsonl`. Conversions:
  - demonstrations `{"messages": [..., assistant]}` -> `{"prompt": messages[:-1], "completion": [last]}`:
    TRL's conversational prompt/completion format gives completion-only loss with the stock SmolLM2 chat
    template, which has no `{% generation %}` tags for `assistant_only_loss` (TRL 1.16 raises "chat template is
    not training-compatible" and auto-patches only templates it knows, not SmolLM2's ChatML);
  - preference pairs keep `prompt` / `chosen` / `rejected` (TRL's conversational preference format);
  - PPO prompts are the `prompt` message lists;
  - rated answers (thumbs) `{"prompt", "completion": [assistant], "label": true|false}` keep those three
    keys: TRL's unpaired preference format, which KTOTrainer takes.
The `meta` columns are dropped: the trainers do not need them and nested dicts of varying shape make
`datasets` Arrow typing fail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.errors import TrainingError

KINDS = ("preferences", "sft", "prompts", "unpaired")
SPLITS = ("train", "test")
Messages = list[dict[str, str]]


class TrainingDataError(TrainingError):
    """The training data is missing, malformed or too small; the message says what to do."""


def file_name(kind: str, split: str) -> str:
    return f"{kind}.{split}.jsonl"


def _messages(value: Any, where: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise TrainingDataError(f"{where}: expected a non-empty list of chat messages")
    out = []
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise TrainingDataError(f'{where}: every message needs string "role" and "content"')
        out.append({"role": m["role"], "content": m["content"]})
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a missing file is an empty list (an export may have nothing of a kind)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingDataError(f"{path}:{number} is not valid JSON ({e}); re-export the feedback") from e
        if not isinstance(row, dict):
            raise TrainingDataError(f"{path}:{number} must be a JSON object")
        rows.append(row)
    return rows


def to_prompt_completion(row: dict[str, Any], where: str) -> dict[str, Messages]:
    """`{"messages": [..., assistant]}` -> `{"prompt": [...], "completion": [assistant]}`."""
    messages = _messages(row.get("messages"), where)
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise TrainingDataError(f"{where}: a demonstration must end with an assistant message after a prompt")
    return {"prompt": messages[:-1], "completion": [messages[-1]]}


def to_preference(row: dict[str, Any], where: str) -> dict[str, Messages]:
    pair = {k: _messages(row.get(k), f"{where} {k}") for k in ("prompt", "chosen", "rejected")}
    for k in ("chosen", "rejected"):
        if pair[k][-1]["role"] != "assistant":
            raise TrainingDataError(f"{where}: {k} must be assistant messages")
    return pair


def to_unpaired(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A rated answer: `{"prompt": [...], "completion": [assistant], "label": bool}`."""
    prompt = _messages(row.get("prompt"), f"{where} prompt")
    completion = _messages(row.get("completion"), f"{where} completion")
    if len(completion) != 1 or completion[0]["role"] != "assistant":
        raise TrainingDataError(f"{where}: completion must be one assistant message")
    if not isinstance(row.get("label"), bool):
        raise TrainingDataError(f'{where}: "label" must be true (a good answer) or false (a bad one)')
    return {"prompt": prompt, "completion": completion, "label": row["label"]}


@dataclass
class ExportData:
    """One feedback snapshot, loaded and converted; `counts()` is what the plan and the report print."""

    folder: Path
    snapshot_id: str
    manifest: dict[str, Any]
    sft: dict[str, list[dict[str, Messages]]] = field(default_factory=dict)
    pairs: dict[str, list[dict[str, Messages]]] = field(default_factory=dict)
    prompts: dict[str, list[Messages]] = field(default_factory=dict)
    unpaired: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # rated answers (KTO)
    gated_prompts_left_out: dict[str, int] = field(default_factory=dict)  # relevance-gated, not PPO prompts

    def counts(self) -> dict[str, int]:
        out = {}
        tables = (
            ("demonstrations", self.sft),
            ("pairs", self.pairs),
            ("prompts", self.prompts),
            ("ratings", self.unpaired),
        )
        for name, table in tables:
            for split in SPLITS:
                out[f"{name}_{split}"] = len(table.get(split, []))
        if any(self.gated_prompts_left_out.values()):
            for split in SPLITS:
                out[f"gated_prompts_left_out_{split}"] = self.gated_prompts_left_out.get(split, 0)
        return out

    def eval_prompts(self) -> tuple[list[Messages], str]:
        """Held-out prompts for the gate: the test split; falls back to test pair prompts, then train."""
        if self.prompts.get("test"):
            return self.prompts["test"], "prompts.test"
        if self.pairs.get("test"):
            return _unique([p["prompt"] for p in self.pairs["test"]]), "preferences.test prompts"
        return self.prompts.get("train", []), "prompts.train (no test split in this snapshot)"


def _unique(prompts: list[Messages]) -> list[Messages]:
    seen, out = set(), []
    for p in prompts:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_export(folder: str | Path) -> ExportData:
    """Load every file of an export folder; raises TrainingDataError when it is not one."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise TrainingDataError(
            f"{folder} is not a feedback export (no manifest.json); run `ragqa feedback export` or let "
            "`ragqa retrain` export the store"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrainingDataError(f"{manifest_path} is not valid JSON ({e})") from e
    snapshot = manifest.get("snapshot_id")
    if not isinstance(snapshot, str) or not snapshot:
        raise TrainingDataError(f"{manifest_path} has no snapshot_id")
    data = ExportData(folder=folder, snapshot_id=snapshot, manifest=manifest)
    for split in SPLITS:
        path = folder / file_name("sft", split)
        data.sft[split] = [to_prompt_completion(r, f"{path}:{i}") for i, r in enumerate(read_jsonl(path), 1)]
        path = folder / file_name("preferences", split)
        data.pairs[split] = [to_preference(r, f"{path}:{i}") for i, r in enumerate(read_jsonl(path), 1)]
        path = folder / file_name("prompts", split)
        rows = list(enumerate(read_jsonl(path), 1))
        # The gate's prompts are off-topic for the documents and never reach the served model (the same gate
        # answers them): rolling them out would spend PPO steps on questions it is not asked.
        kept = [(i, r) for i, r in rows if r.get("relevance_gated") is not True]
        # A prompt the gate answered once and the model another time is kept (the export keeps both copies):
        # only prompts with no answered copy count as left out.
        answered = {json.dumps(r.get("prompt"), sort_keys=True) for _, r in kept}
        data.gated_prompts_left_out[split] = sum(
            r.get("relevance_gated") is True and json.dumps(r.get("prompt"), sort_keys=True) not in answered
            for _, r in rows
        )
        data.prompts[split] = [_messages(r.get("prompt"), f"{path}:{i}") for i, r in kept]
        path = folder / file_name("unpaired", split)
        data.unpaired[split] = [to_unpaired(r, f"{path}:{i}") for i, r in enumerate(read_jsonl(path), 1)]
    return data


def require(count: int, minimum: int, what: str, hint: str) -> None:
    """Refuse clearly when there is too little data for a stage."""
    if count < minimum:
        raise TrainingDataError(f"too little data: {count} {what} (need at least {minimum}). {hint}")


def conversation_lengths(tokenizer: Any, conversations: list[Messages]) -> list[int]:
    """Token count of each conversation rendered with the chat template (what the trainers tokenise)."""
    return [len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in conversations]
