"""Read labelled QA files and preference-pair files into one shape each, detecting the format from the content.

QA formats (`load_qa`):
  - "squad": SQuAD v1.1 / v2.0 JSON, XQuAD and COVID-QA (same shape: data[].paragraphs[].{context, qas[]});
    `is_impossible: true` marks an unanswerable SQuAD 2.0 question.
  - "nq-open": NQ-open oracle JSONL (Lost in the Middle): {question, answers: [str], ctxs: [{title, text, isgold}]}.
  - "jsonl": plain JSONL: {question, answers: [str] | str, id?, context? | source?}.
Every distinct context becomes one document (`QADataset.documents`, keyed by the file name it is written as),
so the file's contexts can be indexed as a corpus and retrieval is scored against the question's gold document.

Preference formats (`load_pairs`):
  - "hh": Anthropic HH-RLHF, {chosen: str, rejected: str}, each a whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue.
  - "trl": TRL preference data, conversational ({prompt?: [messages], chosen: [messages], rejected: [messages]},
    which is also what `ragqa feedback export` writes) or standard ({prompt: str, chosen: str, rejected: str}).
Files may be gzip-compressed (.gz).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QA_FORMATS = ("squad", "nq-open", "jsonl")
PAIR_FORMATS = ("hh", "trl")


class EvalDataError(ValueError):
    """A QA or preference file cannot be read; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class Document:
    doc_id: str  # file name the context is written as, e.g. "normans-1a2b3c4d5e6f.txt"
    title: str
    text: str


@dataclass(frozen=True)
class QAExample:
    qid: str
    question: str
    answers: tuple[str, ...]  # gold answers (empty for an unanswerable question)
    unanswerable: bool
    doc_id: str | None = None  # the gold document in QADataset.documents (its context)
    source: str | None = None  # the gold source path in an existing index (plain JSONL `source`)


@dataclass
class QADataset:
    path: Path
    format: str
    examples: list[QAExample]
    documents: dict[str, Document] = field(default_factory=dict)

    @property
    def num_unanswerable(self) -> int:
        return sum(e.unanswerable for e in self.examples)


@dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[dict[str, str], ...]  # chat messages before the compared answers
    chosen: str
    rejected: str


# ---- reading files -------------------------------------------------------------------------------------
def _open_text(path: Path) -> str:
    if not path.exists():
        raise EvalDataError(f"{path} does not exist")
    if not path.is_file():
        raise EvalDataError(f"{path} is not a file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise EvalDataError(f"cannot read {path}: {e}") from e
    if not text.strip():
        raise EvalDataError(f"{path} is empty")
    return text


def _json_lines(path: Path, text: str) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{path} line {n} is not valid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise EvalDataError(f"{path} line {n} is not a JSON object")
        yield obj


def _parse(path: Path) -> tuple[Any, list[dict[str, Any]] | None]:
    """(whole-file JSON or None, JSONL records or None)."""
    text = _open_text(path)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return None, list(_json_lines(path, text))
    if isinstance(whole, list):  # a JSON array of records reads like JSONL
        return None, [r for r in whole if isinstance(r, dict)]
    if not isinstance(whole, dict):
        raise EvalDataError(f"{path} holds {_keys_found(whole)}, not JSON objects")
    return whole, None


def _keys_found(obj: Any) -> str:
    if isinstance(obj, dict):
        return ", ".join(sorted(map(str, obj))) or "(none)"
    return f"a JSON {type(obj).__name__}"


# ---- QA --------------------------------------------------------------------------------------------------
def detect_qa_format(whole: Any, records: list[dict[str, Any]] | None, path: Path) -> str:
    if isinstance(whole, dict) and isinstance(whole.get("data"), list):
        first = whole["data"][0] if whole["data"] else {}
        if isinstance(first, dict) and "paragraphs" in first:
            return "squad"
    first_record = records[0] if records else whole if isinstance(whole, dict) else None
    if isinstance(first_record, dict) and "question" in first_record:
        if "ctxs" in first_record:
            return "nq-open"
        if "answers" in first_record:
            return "jsonl"
    raise EvalDataError(
        f"cannot tell the QA format of {path}: found keys {_keys_found(first_record or whole)}. Expected SQuAD "
        "JSON (data[].paragraphs[].qas[]), NQ-open JSONL (question, answers, ctxs) or plain JSONL (question, "
        "answers, optional context/source); pass --format to choose"
    )


def _slug(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:40] or "doc"


def _add_document(docs: dict[str, Document], title: str, text: str) -> str:
    """Register a context once (identical texts share one document); returns its doc_id."""
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    doc_id = f"{_slug(title)}-{digest}.txt"
    docs.setdefault(doc_id, Document(doc_id, title, text))
    return doc_id


def _squad(whole: dict[str, Any], path: Path) -> QADataset:
    docs: dict[str, Document] = {}
    examples = []
    for a, article in enumerate(whole["data"]):
        for paragraph in article.get("paragraphs", []):
            # COVID-QA has no titles, only a document_id per paragraph.
            title = str(article.get("title") or f"document {paragraph.get('document_id', a)}")
            context = paragraph.get("context")
            if not isinstance(context, str) or not context.strip():
                raise EvalDataError(f"{path}: article {title!r} has a paragraph without a context")
            doc_id = _add_document(docs, title, context)
            for qa in paragraph.get("qas", []):
                impossible = bool(qa.get("is_impossible", False))
                answers = () if impossible else _answer_texts(qa.get("answers", []))
                if not impossible and not answers:
                    raise EvalDataError(
                        f"{path}: question {qa.get('id')!r} has no answers and is not impossible"
                    )
                examples.append(
                    QAExample(
                        str(qa.get("id", len(examples))), str(qa["question"]), answers, impossible, doc_id
                    )
                )
    return QADataset(path, "squad", examples, docs)


def _answer_texts(answers: Any) -> tuple[str, ...]:
    """Gold answer strings, de-duplicated in order; SQuAD dicts ({text, answer_start}) or plain strings."""
    if isinstance(answers, str):
        answers = [answers]
    texts = [a["text"] if isinstance(a, dict) else a for a in answers or []]
    return tuple(dict.fromkeys(str(t) for t in texts if str(t).strip()))


def _nq_open(records: list[dict[str, Any]], path: Path) -> QADataset:
    docs: dict[str, Document] = {}
    examples = []
    for n, rec in enumerate(records, start=1):
        ctxs = rec.get("ctxs") or []
        gold = None
        for ctx in ctxs:
            doc_id = _add_document(docs, str(ctx.get("title", "")), _nq_text(ctx))
            if gold is None and (ctx.get("isgold") or ctx.get("hasanswer")):
                gold = doc_id
        answers = _answer_texts(rec.get("answers"))
        if not answers:
            raise EvalDataError(f"{path} line {n}: no answers")
        examples.append(QAExample(str(rec.get("id", n)), str(rec["question"]), answers, False, gold))
    return QADataset(path, "nq-open", examples, docs)


def _nq_text(ctx: dict[str, Any]) -> str:
    title, text = str(ctx.get("title", "")).strip(), str(ctx.get("text", "")).strip()
    return f"{title}\n\n{text}" if title else text


def _plain_jsonl(records: list[dict[str, Any]], path: Path) -> QADataset:
    docs: dict[str, Document] = {}
    examples = []
    for n, rec in enumerate(records, start=1):
        if "question" not in rec:
            raise EvalDataError(f"{path} line {n}: no `question` (found keys {_keys_found(rec)})")
        answers = _answer_texts(rec.get("answers", rec.get("answer")))
        unanswerable = bool(rec.get("unanswerable", rec.get("is_impossible", not answers)))
        context = rec.get("context")
        doc_id = _add_document(docs, str(rec.get("title", "")), context) if isinstance(context, str) else None
        source = rec.get("source")
        examples.append(
            QAExample(
                str(rec.get("id", n)),
                str(rec["question"]),
                answers,
                unanswerable,
                doc_id,
                None if source is None else str(source),
            )
        )
    return QADataset(path, "jsonl", examples, docs)


def load_qa(path: Path | str, fmt: str | None = None) -> QADataset:
    """Read a labelled QA file; `fmt` is one of QA_FORMATS or None to detect it from the content."""
    path = Path(path).expanduser()
    if fmt is not None and fmt not in QA_FORMATS:
        raise EvalDataError(f"unknown QA format {fmt!r}; choose one of {', '.join(QA_FORMATS)}")
    whole, records = _parse(path)
    fmt = fmt or detect_qa_format(whole, records, path)
    if fmt == "squad":
        if not (isinstance(whole, dict) and isinstance(whole.get("data"), list)):
            raise EvalDataError(f"{path} is not SQuAD JSON: found keys {_keys_found(whole)}")
        dataset = _squad(whole, path)
    else:
        if records is None:
            records = [whole] if isinstance(whole, dict) else []
        dataset = _nq_open(records, path) if fmt == "nq-open" else _plain_jsonl(records, path)
    if not dataset.examples:
        raise EvalDataError(f"{path} holds no questions")
    return dataset


# ---- preference pairs ------------------------------------------------------------------------------------
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_dialogue(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def _split_last_answer(messages: list[dict[str, str]], where: str) -> tuple[list[dict[str, str]], str]:
    if not messages or messages[-1].get("role") != "assistant":
        raise EvalDataError(f"{where}: the dialogue does not end with an assistant turn")
    return messages[:-1], str(messages[-1].get("content", ""))


def _hh_pair(rec: dict[str, Any], where: str) -> PreferencePair:
    prompt, chosen = _split_last_answer(parse_hh_dialogue(str(rec["chosen"])), where)
    _, rejected = _split_last_answer(parse_hh_dialogue(str(rec["rejected"])), where)
    return PreferencePair(tuple(prompt), chosen, rejected)


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
        raise EvalDataError(f"{where}: expected a list of chat messages with role/content")
    return [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in value]


def _trl_pair(rec: dict[str, Any], where: str) -> PreferencePair:
    chosen, rejected = _messages(rec["chosen"], where), _messages(rec["rejected"], where)
    if "prompt" in rec:
        prompt = rec["prompt"]
        prompt_msgs = (
            [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, where)
        )
        return PreferencePair(
            tuple(prompt_msgs),
            "\n".join(m["content"] for m in chosen),
            "\n".join(m["content"] for m in rejected),
        )
    # Implicit prompt: the shared conversation prefix, then one differing assistant turn each.
    prompt_msgs, chosen_text = _split_last_answer(chosen, where)
    return PreferencePair(tuple(prompt_msgs), chosen_text, _split_last_answer(rejected, where)[1])


def detect_pair_format(rec: dict[str, Any], path: Path) -> str:
    if "chosen" in rec and "rejected" in rec:
        if isinstance(rec["chosen"], str) and "prompt" not in rec and "\n\nAssistant:" in rec["chosen"]:
            return "hh"
        return "trl"
    raise EvalDataError(
        f"cannot tell the preference format of {path}: found keys {_keys_found(rec)}. Expected `chosen` and "
        "`rejected` (Anthropic HH dialogues or TRL preference data, optionally with `prompt`)"
    )


def load_pairs(path: Path | str, fmt: str | None = None) -> tuple[str, list[PreferencePair]]:
    """Read a preference file; returns (format, pairs)."""
    path = Path(path).expanduser()
    if fmt is not None and fmt not in PAIR_FORMATS:
        raise EvalDataError(f"unknown preference format {fmt!r}; choose one of {', '.join(PAIR_FORMATS)}")
    whole, records = _parse(path)
    if records is None:
        records = [whole]
    if not records:
        raise EvalDataError(f"{path} holds no preference pairs")
    fmt = fmt or detect_pair_format(records[0], path)
    build = _hh_pair if fmt == "hh" else _trl_pair
    pairs = []
    for n, rec in enumerate(records, start=1):
        if "chosen" not in rec or "rejected" not in rec:
            raise EvalDataError(f"{path} record {n}: no chosen/rejected (found keys {_keys_found(rec)})")
        pairs.append(build(rec, f"{path} record {n}"))
    return fmt, pairs
