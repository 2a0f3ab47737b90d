"""Read Open WebUI's feedback export (Admin > Evaluations > Export) into chat ratings to import.

The export is ONE JSON array (not JSONL) of feedback records. What is read from each record:
  data.rating            1 (thumbs up) or -1 (thumbs down); Open WebUI's API also stores "1" / "-1"
  data.reason, data.comment   optional texts, kept as the rating's reason and comment
  data.sibling_model_ids optional; set by Open WebUI when the rated answer had siblings
  meta.message_id        the rated assistant message: the key that makes a second import add nothing
  user_id                kept as the rater's user name
  snapshot.chat          the conversation: a message tree {id: {id, parentId, childrenIds, role, content,
                         model, selectedModelId?}} at `snapshot.chat.chat.history.messages` or, in other
                         versions, `snapshot.chat.history.messages`; failing both, the list of the
                         shown branch at `...chat.messages` (same message objects)
Every other field (tags, details, base_models, timestamps, files, ...) is ignored.

The rated message's parent is the question; the user/assistant messages above it (the branch the user
saw) are the earlier turns. The model version is the message's `selectedModelId` (the real model behind
an arena answer) or else its `model`. When the question has other assistant answers (a regeneration, a
second model, an arena round) the rating is also a vote between them: Open WebUI's leaderboard counts
rating 1 as the rated answer beating its siblings and -1 as losing to them, and so does the import
(a ranking), besides the thumbs on the rated answer itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feedback_store.records import ImportedChatRating

KEY_PREFIX = "openwebui:"
_ROLES = ("user", "assistant")


class RecordError(ValueError):
    """What is wrong with one record (the caller names the record)."""


def looks_like_export(path: Path) -> bool:
    """True when the file is one JSON array (Open WebUI), not JSON lines (our and TRL's formats)."""
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def parse_export(path: Path, *, max_text_chars: int) -> list[ImportedChatRating]:
    """All records of an export as chat ratings, or RecordError naming the first bad record."""
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(records, list):
        raise RecordError(f"expected a JSON array of feedback records, got {type(records).__name__}")
    items = []
    for i, record in enumerate(records, start=1):
        try:
            items.append(_rating(record, max_text_chars))
        except RecordError as exc:
            raise RecordError(f"record {i}{_record_name(record)}: {exc}") from None
    return items


def _record_name(record: Any) -> str:
    if not isinstance(record, Mapping):
        return ""
    meta = record.get("meta")
    mid = meta.get("message_id") if isinstance(meta, Mapping) else None
    return f" (id {record.get('id')}, message {mid})" if record.get("id") else f" (message {mid})"


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where} must be an object, got {type(value).__name__}")
    return value


def _tree(snapshot: Mapping[str, Any]) -> Mapping[str, Any]:
    """The message tree, wherever this Open WebUI version put it."""
    chat = _object(snapshot.get("chat"), "snapshot.chat")
    holders = (("snapshot.chat.chat", chat.get("chat")), ("snapshot.chat", chat))
    for where, holder in holders:
        if isinstance(holder, Mapping) and isinstance(holder.get("history"), Mapping):
            return _object(holder["history"].get("messages"), f"{where}.history.messages")
    for _where, holder in holders:  # no tree: the shown branch as a list carries the same parent links
        if isinstance(holder, Mapping) and isinstance(holder.get("messages"), list):
            listed = [m for m in holder["messages"] if isinstance(m, Mapping)]
            return {m["id"]: m for m in listed if isinstance(m.get("id"), str)}
    raise RecordError(
        "no message tree at snapshot.chat.chat.history.messages or snapshot.chat.history.messages"
    )


def _message(tree: Mapping[str, Any], mid: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(mid, str) or mid not in tree:
        raise RecordError(f"{what} {mid!r} is not in the chat snapshot")
    msg = _object(tree[mid], f"message {mid}")
    if msg.get("role") not in _ROLES:
        raise RecordError(f"message {mid} has role {msg.get('role')!r}; expected user or assistant")
    return msg


def _text(msg: Mapping[str, Any], mid: str, limit: int) -> str:
    content = msg.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, images...]
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    if not isinstance(content, str) or not content.strip():
        raise RecordError(f"message {mid} has no text content")
    if len(content) > limit:
        raise RecordError(f"message {mid} has {len(content)} characters, more than the limit of {limit}")
    return content


def _model(msg: Mapping[str, Any]) -> str:
    return str(msg.get("selectedModelId") or msg.get("model") or "openwebui")


def _earlier_turns(tree: Mapping[str, Any], question: Mapping[str, Any], limit: int) -> list[dict[str, str]]:
    """The messages above the question, oldest first (the branch the user saw)."""
    turns: list[dict[str, str]] = []
    seen = {question.get("id")}
    parent = question.get("parentId")
    while parent is not None:
        if parent in seen:
            raise RecordError(f"the chat's message tree has a cycle at message {parent}")
        seen.add(parent)
        msg = _message(tree, parent, "earlier message")
        turns.append({"role": str(msg["role"]), "content": _text(msg, parent, limit)})
        parent = msg.get("parentId")
    return turns[::-1]


def _text_field(data: Mapping[str, Any], key: str) -> str | None:
    """An optional free-text field (data.reason, data.comment), stripped; None when absent or blank."""
    value = data.get(key)
    return str(value).strip() or None if value is not None else None


def _thumb(rating: Any) -> bool:
    """True for thumbs up. Open WebUI's API accepts the rating as a number or a string."""
    if isinstance(rating, bool) or str(rating).strip() not in ("1", "-1"):
        raise RecordError(f"data.rating must be 1 or -1, got {rating!r}")
    return str(rating).strip() == "1"


def _rating(record: Any, limit: int) -> ImportedChatRating:
    record = _object(record, "a record")
    if "snapshot" not in record and "data" not in record and isinstance(record.get("chat"), Mapping):
        raise RecordError(
            "this is a chat export (conversations, no ratings); export the ratings from Open WebUI's "
            "Admin Panel > Evaluations > Export"
        )
    if record.get("type", "rating") != "rating":
        raise RecordError(f"type {record.get('type')!r} is not a rating")
    data = _object(record.get("data"), "data")
    up = _thumb(data.get("rating"))
    mid = _object(record.get("meta"), "meta").get("message_id")
    tree = _tree(_object(record.get("snapshot"), "snapshot"))
    rated = _message(tree, mid, "the rated message (meta.message_id)")
    if rated["role"] != "assistant":
        raise RecordError(f"the rated message {mid} is a {rated['role']} message, not an answer")
    question = _message(tree, rated.get("parentId"), "the rated message's parent")
    if question["role"] != "user":
        raise RecordError(f"the rated message's parent {rated.get('parentId')} is not a user message")
    qid = str(rated.get("parentId"))
    question_text, turns = _text(question, qid, limit), _earlier_turns(tree, question, limit)
    answers = [(_text(rated, mid, limit), _model(rated))]
    for sid in question.get("childrenIds") or ():
        sibling = _message(tree, sid, "sibling") if sid != mid else None
        if sibling is not None and sibling["role"] == "assistant":
            answers.append((_text(sibling, sid, limit), _model(sibling)))
    return ImportedChatRating(
        key=KEY_PREFIX + mid,
        prompt=(*turns, {"role": "user", "content": question_text}),
        question=question_text,
        context=tuple(turns),
        answers=tuple(answers),
        up=up,
        reason=_text_field(data, "reason"),
        comment=_text_field(data, "comment"),
        rater=str(record["user_id"]) if record.get("user_id") else None,
    )
