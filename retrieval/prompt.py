"""THE prompt format: (question, passages, history) -> chat messages.

Serving, SFT data, reward data, PPO rollouts and evaluation all render prompts here, so the model is
trained on exactly what it sees when serving. Keep it a pure function: any change to the text changes
what every trained model expects, and the golden test in tests/retrieval/test_prompt.py must be
updated on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from retrieval.types import source_label

NO_ANSWER = "The documents do not contain the answer."

SYSTEM_PROMPT = (
    "You are a careful assistant that answers questions about the user's documents. "
    "Answer only from the numbered passages. "
    "Cite every passage you use by its number in square brackets, like [1]. "
    f'If the passages do not contain the answer, reply exactly: "{NO_ANSWER}"'
)

# How many earlier turns a follow-up question keeps: enough for "and when did it open?", short
# enough that the passages, not old answers, fill the context window.
MAX_HISTORY_TURNS = 4

_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def passage_field(passage: Any, name: str) -> Any:
    # Passages come as retrieval.types.Passage in the app and as plain dicts from the feedback store.
    return passage[name] if isinstance(passage, Mapping) else getattr(passage, name)


def format_passages(passages: Sequence[Any]) -> str:
    """Number the passages [1]..[k] in the order given, each with its source file."""
    blocks = []
    for i, p in enumerate(passages, start=1):
        text = " ".join(str(passage_field(p, "text")).split())
        # The name is normalised here too: passages stored with feedback before names were cleaned come as dicts.
        blocks.append(f"[{i}] (source: {source_label(str(passage_field(p, 'source')))})\n{text}")
    return "\n\n".join(blocks)


def render_user_message(question: str, passages: Sequence[Any]) -> str:
    context = format_passages(passages) if passages else "(no passages)"
    return f"Passages:\n{context}\n\nQuestion: {question.strip()}"


def render_prompt(
    question: str,
    passages: Sequence[Any],
    history: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]]:
    """Render the chat messages for one question.

    `passages` are anything with `text` and `source` (attributes or keys), in rank order: the first
    is cited as [1]. `history` holds earlier turns as `{"role": "user"|"assistant", "content": str}`;
    only the last MAX_HISTORY_TURNS exchanges are kept, without their passages.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    turns = [
        {"role": str(m["role"]), "content": str(m["content"])}
        for m in history
        if m.get("role") in ("user", "assistant") and str(m.get("content", "")).strip()
    ]
    messages.extend(turns[-2 * MAX_HISTORY_TURNS :])
    messages.append({"role": "user", "content": render_user_message(question, passages)})
    return messages


def fit_passages(
    question: str,
    passages: Sequence[Any],
    history: Sequence[Mapping[str, str]],
    count_tokens: Callable[[list[dict[str, str]]], int],
    budget: int,
) -> list[Any]:
    """Keep the best-ranked passages whose rendered prompt fits in `budget` tokens.

    Drops passages from the end (lowest rank first). `count_tokens` measures rendered messages with
    the serving model's own chat template, so the budget is exact for that model.
    """
    kept = list(passages)
    while kept and count_tokens(render_prompt(question, kept, history)) > budget:
        kept.pop()
    return kept


def parse_citations(answer: str, num_passages: int) -> list[int]:
    """The passage numbers an answer cites, in order of first mention, ignoring out-of-range ones.

    Accepts "[2]", "[1, 3]" and "[1][2]".
    """
    cited: list[int] = []
    for group in _CITATION.findall(answer):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= num_passages and n not in cited:
                cited.append(n)
    return cited
