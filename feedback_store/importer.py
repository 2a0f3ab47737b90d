"""Import preference pairs or demonstrations from JSONL into the store, all or nothing.

Accepted line formats (one JSON object per line; blank lines are skipped; one format per file):
  preferences  {"prompt": [messages] | "text", "chosen": [assistant msg] | "text",
                "rejected": [assistant msg] | "text", "meta": {...}?}   (our export, TRL explicit prompt)
               {"chosen": [messages...], "rejected": [messages...]}     (TRL implicit prompt: the shared
                                                                         leading messages are the prompt)
  sft          {"messages": [..., assistant msg], "meta": {...}?}       (our export, TRL conversational)
               {"prompt": [messages] | "text", "completion": [assistant msg] | "text"}
  openwebui    one JSON array: Open WebUI's feedback export (see feedback_store.openwebui); each rated
               answer keeps its question, earlier turns and siblings; a second import of it adds nothing
               (keyed by message id). A bad record fails the whole file with one line naming it.
Plain-string prompts become one user message. Every line is validated before anything is written;
errors name the file, line and problem (FeedbackImportError). The items are then stored in one
transaction, marked with the session `imported:<file name>`; the original rater (meta.user or
meta.rater) is kept as the user name, and `meta.simulated` keeps the `simulated:` prefix. A line
already imported before (same content) is skipped, so importing a file twice imports it once.
Prompts are stored verbatim, so exporting again gives the same prompt, chosen and rejected texts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from feedback_store import openwebui
from feedback_store.errors import FeedbackImportError
from feedback_store.pairs import normalize_text
from feedback_store.records import (
    IMPORTED_PREFIX,
    SIMULATED_PREFIX,
    ImportedChatRating,
    ImportedDemonstration,
    ImportedPreference,
    ImportResult,
)
from feedback_store.store import FeedbackStore

_ROLES = ("system", "user", "assistant")
_QUESTION = re.compile(r"\n\nQuestion: (.*)\Z", re.DOTALL)  # retrieval.prompt.render_user_message
_MAX_ERRORS = 20
Item = ImportedPreference | ImportedDemonstration | ImportedChatRating


class _LineError(ValueError):
    """What is wrong with one line (the caller adds the line number)."""


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    # Some datasets store content as parts: [{"type": "text", "text": ...}].
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise _LineError(f"{where}: content must be a string, got {type(value).__name__}")


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _LineError(f"{where} must be a non-empty list of {{'role', 'content'}} messages or a string")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise _LineError(f"{where}[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in _ROLES:
            raise _LineError(f"{where}[{i}] has role {m['role']!r}; expected one of {', '.join(_ROLES)}")
        out.append({"role": str(m["role"]), "content": _content(m["content"], f"{where}[{i}]")})
    return out


def _answer(value: Any, where: str) -> str:
    """One assistant answer: a string, or a list holding exactly one assistant message."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, where)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise _LineError(
            f"{where} must be exactly one assistant message, got roles {[m['role'] for m in msgs]}"
        )
    return msgs[0]["content"]


def _prompt(value: Any, where: str) -> list[dict[str, str]]:
    msgs = _messages(value, where)
    if msgs[-1]["role"] != "user":
        raise _LineError(f"{where} must end with a user message, it ends with {msgs[-1]['role']!r}")
    return msgs


def _question(prompt: Sequence[Mapping[str, str]]) -> str:
    last = prompt[-1]["content"]
    match = _QUESTION.search(last)
    question = match.group(1) if match else last
    if not question.strip():
        raise _LineError("the prompt's last user message is empty")
    return question


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("meta", {})
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise _LineError(f"'meta' must be an object, got {type(meta).__name__}")
    return meta


def _rater(meta: Mapping[str, Any]) -> str | None:
    rater = str(meta.get("user") or meta.get("rater") or "").split(",")[0] or None
    if meta.get("simulated") is True and not (rater or "").startswith(SIMULATED_PREFIX):
        rater = SIMULATED_PREFIX + (rater or "imported")
    return rater


def _check_len(texts: Sequence[str], limit: int) -> None:
    for text in texts:
        if len(text) > limit:
            raise _LineError(f"a text has {len(text)} characters, more than the limit of {limit}")


def _preference(obj: Mapping[str, Any], limit: int) -> ImportedPreference:
    if "prompt" in obj:
        prompt = _prompt(obj["prompt"], "prompt")
        chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
    else:  # implicit prompt: the shared leading messages
        full_c, full_r = _messages(obj["chosen"], "chosen"), _messages(obj["rejected"], "rejected")
        n = 0
        while n < min(len(full_c), len(full_r)) - 1 and full_c[n] == full_r[n]:
            n += 1
        if n == 0:
            raise _LineError("no 'prompt', and chosen and rejected share no leading messages to use as one")
        prompt = _prompt(full_c[:n], "the shared prompt")
        chosen, rejected = _answer(full_c[n:], "chosen"), _answer(full_r[n:], "rejected")
    if normalize_text(chosen) == normalize_text(rejected):
        raise _LineError("chosen and rejected are the same answer (no preference)")
    _check_len([m["content"] for m in prompt] + [chosen, rejected], limit)
    meta = _meta(obj)
    source = meta.get("source") if meta.get("source") in ("ranking", "correction", "thumbs") else "ranking"
    return ImportedPreference(
        prompt=tuple(prompt),
        question=_question(prompt),
        chosen=chosen,
        rejected=rejected,
        source=source,
        chosen_model=str(meta.get("chosen_model") or "imported"),
        rejected_model=str(meta.get("rejected_model") or "imported"),
        rater=_rater(meta),
    )


def _demonstration(obj: Mapping[str, Any], limit: int) -> ImportedDemonstration:
    if "messages" in obj:
        msgs = _messages(obj["messages"], "messages")
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise _LineError("messages must be a prompt followed by one final assistant message")
        prompt = _prompt(msgs[:-1], "messages before the answer")
        text = msgs[-1]["content"]
    else:
        prompt, text = _prompt(obj["prompt"], "prompt"), _answer(obj["completion"], "completion")
    if not text.strip():
        raise _LineError("the assistant answer is empty")
    _check_len([m["content"] for m in prompt] + [text], limit)
    meta = _meta(obj)
    source = "thumbs_up" if meta.get("source") == "thumbs_up" else "correction"
    model = str(meta.get("model") or ("imported" if source == "thumbs_up" else "human"))
    return ImportedDemonstration(tuple(prompt), _question(prompt), text, source, model, _rater(meta))


def _kind(obj: Mapping[str, Any]) -> str:
    keys = set(obj)
    if {"chosen", "rejected"} <= keys:
        return "preferences"
    if "messages" in keys or {"prompt", "completion"} <= keys:
        return "sft"
    if {"prompt", "question", "interaction_id"} <= keys:
        raise _LineError(
            "this is a prompts file (PPO prompts carry no feedback); import preferences or sft files"
        )
    raise _LineError(
        f"unknown format (keys {sorted(keys)}); expected prompt/chosen/rejected, chosen/rejected, "
        "messages, or prompt/completion"
    )


def parse_file(path: str | Path, *, max_text_chars: int = 100_000) -> list[Item]:
    """Validate every line of a JSONL file; return its items or raise FeedbackImportError listing
    each bad line (`file:line: problem`, at most 20)."""
    path = Path(path)
    if not path.is_file():
        raise FeedbackImportError(f"{path}: no such file")
    items: list[Item] = []
    errors: list[str] = []
    try:
        if openwebui.looks_like_export(path):
            return _parse_openwebui(path, max_text_chars)
        _parse_lines(path, items, errors, max_text_chars)
    except UnicodeDecodeError as exc:
        raise FeedbackImportError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if errors:
        raise FeedbackImportError("nothing was imported; fix these lines:\n" + "\n".join(errors))
    if not items:
        raise FeedbackImportError(f"{path}: no lines to import")
    return items


def _parse_openwebui(path: Path, max_text_chars: int) -> list[Item]:
    try:
        items: list[Item] = list(openwebui.parse_export(path, max_text_chars=max_text_chars))
    except openwebui.RecordError as exc:
        raise FeedbackImportError(f"nothing was imported: {path.name}: {exc}") from None
    if not items:
        raise FeedbackImportError(f"{path}: the Open WebUI export holds no feedback records")
    return items


def _parse_lines(path: Path, items: list[Item], errors: list[str], max_text_chars: int) -> None:
    kind: str | None = None
    with path.open("r", encoding="utf-8", errors="strict") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                try:
                    obj = json.loads(line.rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise _LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise _LineError(f"expected a JSON object, got {type(obj).__name__}")
                line_kind = _kind(obj)
                if kind is None:
                    kind = line_kind
                elif line_kind != kind:
                    raise _LineError(f"a {line_kind} line in a {kind} file; import one format per file")
                parse = _preference if kind == "preferences" else _demonstration
                items.append(parse(obj, max_text_chars))
            except _LineError as exc:
                errors.append(f"{path.name}:{lineno}: {exc}")
                if len(errors) >= _MAX_ERRORS:
                    errors.append("... (stopped after 20 errors)")
                    break


def import_file(store: FeedbackStore, path: str | Path) -> ImportResult:
    """Validate `path` fully, then store all of its items in one transaction (marked imported:<name>)."""
    path = Path(path)
    items = parse_file(path, max_text_chars=store.max_text_chars)
    return store.import_items(items, origin=IMPORTED_PREFIX + path.name)
