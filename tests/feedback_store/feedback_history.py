"""A small hand-built feedback history shared by the feedback store tests (golden export files)."""

from __future__ import annotations

from dataclasses import dataclass

from feedback_store.store import FeedbackStore
from retrieval.types import Passage


@dataclass
class History:
    """Ids of the hand-built history (see `build_history`)."""

    i1: int
    a1: int
    b1: int
    c1: int
    i2: int
    a2: int
    b2: int
    i3: int
    correction: int


PASSAGES_1 = [
    Passage(1, "guide.md#0", "guide.md", "The library opens at 9 am on weekdays.", 0.9),
    Passage(2, "guide.md#1", "guide.md", "On Sundays  the library\nis closed.", 0.5),
]


def build_history(store: FeedbackStore) -> History:
    """Three interactions with every kind of feedback; the export golden files are made from this.

    1. "When does the library open?": candidates A, B, C; ranked A > (B = C) by a simulated rater
       -> pairs A>B, A>C (margin 1; the tie B=C gives none); a correction replacing B -> pair corr>B,
       and the correction is a demonstration.
    2. a follow-up with one earlier turn: A thumbs up, B thumbs down (reason) -> pair A>B (thumbs);
       A is a demonstration.
    3. a question where both answers were bad -> no pair, counted as both-bad.
    """
    ids1 = store.record_interaction(
        "When does the library open?",
        PASSAGES_1,
        [
            {"text": "It opens at 9 am on weekdays [1].", "model_version": "v0001", "sampling": {"seed": 1}},
            {
                "text": "It opens at noon.",
                "model_version": "v0001",
                "sampling": {"seed": 2, "temperature": 0.7},
            },
            {"text": "Sundays.", "model_version": "v0002", "latency_ms": 812.5},
        ],
        session_id="simulated:f1",
    )
    a1, b1, c1 = ids1.candidate_ids
    store.record_ranking(ids1.interaction_id, [[a1], [b1, c1]], session_id="simulated:f1")
    corr = store.record_correction(
        ids1.interaction_id,
        "The library opens at 9 am on weekdays and is closed on Sundays [1][2].",
        replaces=[b1],
        session_id="s-alice",
        user="alice",
    )
    ids2 = store.record_interaction(
        "And on Sundays?",
        [
            {
                "source": "guide.md",
                "text": "On Sundays the library is closed.",
                "chunk_id": "guide.md#1",
                "score": 0.8,
            }
        ],
        [
            {"text": "It is closed on Sundays [1].", "model_version": "v0002"},
            {"text": "It opens at 10 am.", "model_version": "v0002"},
        ],
        context=[
            {"role": "user", "content": "When does the library open?"},
            {"role": "assistant", "content": "At 9 am on weekdays [1]."},
        ],
        session_id="s-bob",
        user="bob",
    )
    a2, b2 = ids2.candidate_ids
    store.record_rating(a2, True, session_id="s-bob", user="bob")
    store.record_rating(b2, False, reason="wrong: it is closed", session_id="s-bob", user="bob")
    ids3 = store.record_interaction(
        "Who founded the library?",
        [],
        [{"text": "Napoleon [1].", "model_version": "v0002"}, {"text": "Nobody.", "model_version": "v0002"}],
        session_id="s-carol",
    )
    store.record_ranking(ids3.interaction_id, [], both_bad=True, session_id="s-carol")
    return History(ids1.interaction_id, a1, b1, c1, ids2.interaction_id, a2, b2, ids3.interaction_id, corr)
