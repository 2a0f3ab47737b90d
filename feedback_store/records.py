"""What the store hands back to readers: one interaction with everything recorded about it.

Export, stats and the app read these plain frozen dataclasses; none of them touches SQL. A rater whose
session id or user name starts with `simulated:` (e.g. `simulated:f1`, a scripted rater in a
benchmark) marks everything it recorded as simulated; items loaded by the importer carry the session
id `imported:<file name>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.prompt import render_prompt

SIMULATED_PREFIX = "simulated:"
IMPORTED_PREFIX = "imported:"


def is_simulated(*raters: str | None) -> bool:
    """True when any of the given session ids / user names is a simulated rater."""
    return any(r is not None and r.startswith(SIMULATED_PREFIX) for r in raters)


@dataclass(frozen=True)
class InteractionIds:
    """What `record_interaction` returns: the new interaction and its candidates, in the order given."""

    interaction_id: int
    candidate_ids: tuple[int, ...]


@dataclass(frozen=True)
class NewCandidate:
    """A candidate answer to record (`record_interaction`, `add_candidates`): the write-side twin of
    CandidateRecord, so the app and the simulator hand the store one shape instead of dicts of their own."""

    text: str
    model_version: str
    # seed, temperature, top_p, top_k, max_new_tokens, ...
    sampling: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    label: str | None = None  # what the rater sees: "answer", "A", "B", ...


@dataclass(frozen=True)
class CandidateRecord:
    id: int
    position: int  # 0-based order of generation within the interaction
    label: str  # what the rater saw: "A", "B", ...
    text: str
    model_version: str
    sampling: dict[str, Any]  # seed, temperature, top_p, top_k, max_new_tokens, ...
    latency_ms: float | None
    created_at: str


@dataclass(frozen=True)
class RankingRecord:
    id: int
    order: tuple[tuple[int, ...], ...]  # groups of candidate ids, best first; a group is a tie
    both_bad: bool
    session_id: str
    user: str | None
    created_at: str


@dataclass(frozen=True)
class RatingRecord:
    id: int
    candidate_id: int
    up: bool  # meaningless when withdrawn
    reason: str | None  # the reason tags, comma-separated ("wrong, not in the sources")
    session_id: str
    user: str | None
    created_at: str
    withdrawn: bool = (
        False  # the rater took the rating back (un-liked): the session's earlier ratings no longer count
    )
    comment: str | None = None  # free text the rater wrote beside the tags


@dataclass(frozen=True)
class CorrectionRecord:
    id: int
    text: str
    replaces: tuple[int, ...]  # candidate ids this written answer is better than
    session_id: str
    user: str | None
    created_at: str


@dataclass(frozen=True)
class InteractionRecord:
    """One question as asked and shown, with all feedback on it."""

    id: int
    question: str
    context: tuple[dict[str, str], ...]  # earlier turns, {"role", "content"}
    passages: tuple[dict[str, Any], ...]  # {"rank", "chunk_id", "source", "text", "score"}, rank order
    session_id: str
    user: str | None
    created_at: str
    verbatim_prompt: tuple[dict[str, str], ...] | None = None  # imported items only
    candidates: tuple[CandidateRecord, ...] = ()
    rankings: tuple[RankingRecord, ...] = ()
    ratings: tuple[RatingRecord, ...] = ()
    corrections: tuple[CorrectionRecord, ...] = ()

    @property
    def origin(self) -> str:
        """`live` for feedback given in the app, `imported:<file name>` for imported items."""
        return self.session_id if self.session_id.startswith(IMPORTED_PREFIX) else "live"

    @property
    def simulated(self) -> bool:
        return is_simulated(self.session_id, self.user)

    def prompt_messages(self) -> list[dict[str, str]]:
        """The chat messages the model saw: rendered by THE prompt format, or verbatim if imported."""
        if self.verbatim_prompt is not None:
            return [dict(m) for m in self.verbatim_prompt]
        return render_prompt(self.question, self.passages, self.context)


@dataclass(frozen=True)
class ImportedPreference:
    """One validated preference line to import: `chosen` is better than `rejected` for `prompt`."""

    prompt: tuple[Mapping[str, str], ...]
    question: str
    chosen: str
    rejected: str
    source: str = "ranking"  # ranking | correction | thumbs
    chosen_model: str = "imported"
    rejected_model: str = "imported"
    rater: str | None = None  # the original rater, kept as the user name (keeps `simulated:` visible)


@dataclass(frozen=True)
class ImportedDemonstration:
    """One validated demonstration line to import: `text` is a good answer to `prompt`."""

    prompt: tuple[Mapping[str, str], ...]
    question: str
    text: str
    source: str = "correction"  # correction | thumbs_up
    model: str = "human"
    rater: str | None = None


@dataclass(frozen=True)
class ImportedChatRating:
    """One rated answer from a chat app's feedback export (Open WebUI), to import as a live-like item.

    The interaction is the rated answer's question with the earlier turns as context; `answers[0]` is
    the rated answer and the rest are its siblings (other answers to the same question). Without
    siblings the rating is a thumbs up/down on the answer; with siblings it is also a vote between them,
    stored as a ranking: the rated answer above the siblings (up) or below them (down).
    """

    key: str  # idempotency key (e.g. "openwebui:<message id>"): the same key imports once
    prompt: tuple[Mapping[str, str], ...]  # earlier turns + the question, as the chat model saw them
    question: str
    context: tuple[Mapping[str, str], ...]
    answers: tuple[tuple[str, str], ...]  # (text, model version); [0] is the rated answer
    up: bool
    reason: str | None = None
    comment: str | None = None
    rater: str | None = None

    @property
    def is_vote(self) -> bool:
        return len(self.answers) > 1


@dataclass(frozen=True)
class ImportResult:
    imported: int
    duplicates: int  # lines already in the store (same content imported before): skipped
    origin: str
    notes: Sequence[str] = field(default_factory=tuple)
