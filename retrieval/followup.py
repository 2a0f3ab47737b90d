"""Which text to search with in a conversation: the question alone, or joined with the previous question.

A follow-up ("and when did it open?") names nothing to search for, so it must be searched together with the
previous question; a change of topic must not be, or the old topic's passages crowd out the new one's. Both
readings are embedded and the one whose best passage is closer wins: the dense cosine of a query to its
nearest chunk says how well the index answers it. A follow-up alone matches nothing well (low cosine), the
joined text finds the previous topic again; a new, self-contained question matches its own passage better
than a mixture of two topics does. Measured on tests/fixtures/followups.jsonl (benchmarks/followups.py,
docs/results/followups/): hit@1 on follow-ups 1.00 as with always joining, on changes of topic 0.78
instead of 0.52, and 15% instead of 39% of the passages from the old topic.

The cost is one more query embedding (~10 ms on one CPU thread) and one more dense top-1 search, and only
when there is a previous question.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The joined reading must beat the question alone's best cosine by more than this. A new question that
# follows another often gains a little from the previous question's words (its passages match them well),
# so a gain of 0 would still leak; a real follow-up gains far more (measured on the set above: follow-ups
# gained +0.02..+0.46; the margin sweep 0.00/0.05/0.10/0.15/0.20 gave topic-change hit@1 0.65/0.74/0.78/
# 0.78/0.78 and follow-up hit@1 1.00 up to 0.15, 0.91 at 0.20). 0.10 is the low end of the plateau: missing
# a follow-up costs more (its question alone finds nothing) than joining a topic change (still found at k).
# Chosen on that same small set (no held-out split): treat it as a sensible default, not a tuned optimum.
# (Rerun 2026-11-29 on the guide as it is now: follow-up hit@1 0.96/0.96/0.96/0.91/0.87 and topic change
# 0.61/0.70/0.78/0.83/0.87 over the same margins: 0.10 is still the last margin that loses no follow-up.)
JOIN_MARGIN = 0.10


@dataclass(frozen=True)
class QueryChoice:
    """The text and vector to search with, and why."""

    query: str
    vector: np.ndarray
    follow_up: bool  # True: searched together with the previous question
    cosine_alone: float  # best dense cosine of the question alone (nan when not compared)
    cosine_joined: float  # best dense cosine of previous question + question (nan when no previous one)
    # Both readings' vectors as choose_query embedded them (None when not embedded), so the relevance gate need
    # not embed them again.
    alone_vector: np.ndarray | None = None
    joined_vector: np.ndarray | None = None


def previous_question(history: Sequence[dict[str, str]]) -> str | None:
    """The last user turn of the conversation, or None at its start."""
    previous = [m["content"] for m in history if m.get("role") == "user" and m.get("content", "").strip()]
    return previous[-1] if previous else None


def joined_query(question: str, previous: str | None) -> str:
    """The follow-up reading: the previous question, then this one."""
    return f"{previous} {question}" if previous else question


def best_cosine(index: Any, vector: np.ndarray) -> float:
    """Dense cosine of `vector` to its nearest chunk (vectors are unit length: inner product = cosine)."""
    hits = index.dense_search(vector, 1)
    return float(hits[0][1]) if hits else float("-inf")


def choose_query(
    retriever: Any, question: str, previous: str | None, *, margin: float | None = None
) -> QueryChoice:
    """Search with the question alone unless joining it with the previous question matches the index
    clearly better (its best dense cosine higher by more than `margin`, default JOIN_MARGIN)."""
    margin = JOIN_MARGIN if margin is None else margin
    embed = retriever.embedder.encode_query
    alone = embed(question)
    if not previous:
        return QueryChoice(question, alone, False, float("nan"), float("nan"), alone)
    joined_text = joined_query(question, previous)
    joined = embed(joined_text)
    cos_alone, cos_joined = best_cosine(retriever.index, alone), best_cosine(retriever.index, joined)
    if cos_joined > cos_alone + margin:
        return QueryChoice(joined_text, joined, True, cos_alone, cos_joined, alone, joined)
    return QueryChoice(question, alone, False, cos_alone, cos_joined, alone, joined)


_FOLLOW_UP_START = re.compile(r"^(and|but|also|so|then|what about|how about)\b", re.IGNORECASE)
_REFERRING = re.compile(
    r"\b(it|its|they|them|their|this|that|these|those|there|he|she|his|her|one)\b", re.IGNORECASE
)


def looks_like_follow_up(question: str) -> bool:
    """A cheap detector: a conjunction start, a referring word, or a very short question.

    Retrieval does not use it (choose_query's cosine rule found follow-ups better: benchmarks/followups.py). The
    relevance gate does: a question joined with the previous one always matches the documents the previous one
    was about, so that reading may vouch for the question only when the question refers back to something.
    """
    words = re.findall(r"\w+", question)
    return bool(_FOLLOW_UP_START.search(question.strip()) or _REFERRING.search(question) or len(words) <= 4)
