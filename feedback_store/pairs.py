"""Which preference pairs and demonstrations the recorded feedback implies (pure functions).

Rules (the export, `stats()` and the tests share them):
- ranking: groups best first; every candidate of group i is preferred over every candidate of group
  j > i, with margin j - i. A tie (same group) gives no pair; a "both bad" ranking gives none.
- correction: the written answer is preferred over each candidate it replaces (margin 1).
- thumbs: within one interaction, each net-thumbs-up candidate is preferred over each net-thumbs-down
  one (margin 1). A candidate's net vote counts the latest rating of each rater session.
- pairs whose two texts are equal after whitespace normalisation carry no preference and are dropped.
- demonstrations: every correction, and every net-thumbs-up candidate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from feedback_store.records import CandidateRecord, InteractionRecord, is_simulated


def normalize_text(text: str) -> str:
    """Whitespace-normalised text: what 'the same answer' means for corrections and pairs."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Pair:
    chosen: str
    rejected: str
    source: str  # ranking | correction | thumbs
    margin: int  # rank distance; 1 for corrections and thumbs
    chosen_id: str  # "candidate:<id>" or "correction:<id>"
    rejected_id: str
    chosen_model: str  # model version, or "human" for a correction
    rejected_model: str
    rater: str  # the session id(s) that gave this feedback
    user: str  # their user name(s), "" when anonymous
    simulated: bool


@dataclass(frozen=True)
class Demonstration:
    text: str
    source: str  # correction | thumbs_up
    demo_id: str
    model: str
    rater: str
    user: str
    simulated: bool


def _differs(a: str, b: str) -> bool:
    return normalize_text(a) != normalize_text(b)


def ranking_pairs(rec: InteractionRecord) -> Iterator[Pair]:
    cands = {c.id: c for c in rec.candidates}
    for ranking in rec.rankings:
        if ranking.both_bad:
            continue
        sim = is_simulated(rec.session_id, rec.user, ranking.session_id, ranking.user)
        for i, better in enumerate(ranking.order):
            for j in range(i + 1, len(ranking.order)):
                for a in better:
                    for b in ranking.order[j]:
                        ca, cb = cands[a], cands[b]
                        if _differs(ca.text, cb.text):
                            yield Pair(
                                ca.text,
                                cb.text,
                                "ranking",
                                j - i,
                                f"candidate:{a}",
                                f"candidate:{b}",
                                ca.model_version,
                                cb.model_version,
                                ranking.session_id,
                                ranking.user or "",
                                sim,
                            )


def correction_pairs(rec: InteractionRecord) -> Iterator[Pair]:
    cands = {c.id: c for c in rec.candidates}
    for corr in rec.corrections:
        sim = is_simulated(rec.session_id, rec.user, corr.session_id, corr.user)
        for cid in corr.replaces:
            cand = cands[cid]
            if _differs(corr.text, cand.text):
                yield Pair(
                    corr.text,
                    cand.text,
                    "correction",
                    1,
                    f"correction:{corr.id}",
                    f"candidate:{cid}",
                    "human",
                    cand.model_version,
                    corr.session_id,
                    corr.user or "",
                    sim,
                )


def thumbs_votes(rec: InteractionRecord) -> dict[int, tuple[int, set[str], set[str]]]:
    """Per candidate id: (net vote, rater sessions, user names), counting each session's latest rating."""
    latest: dict[tuple[int, str], tuple[bool, str | None]] = {}
    for r in sorted(rec.ratings, key=lambda r: r.id):
        latest[(r.candidate_id, r.session_id)] = (r.up, r.user)
    votes: dict[int, tuple[int, set[str], set[str]]] = {}
    for (cid, session), (up, user) in latest.items():
        net, sessions, users = votes.get(cid, (0, set(), set()))
        sessions.add(session)
        if user:
            users.add(user)
        votes[cid] = (net + (1 if up else -1), sessions, users)
    return votes


def thumbs_pairs(rec: InteractionRecord) -> Iterator[Pair]:
    votes = thumbs_votes(rec)
    cands = {c.id: c for c in rec.candidates}
    ups = [cid for cid in sorted(votes) if votes[cid][0] > 0]
    downs = [cid for cid in sorted(votes) if votes[cid][0] < 0]
    for a in ups:
        for b in downs:
            ca, cb = cands[a], cands[b]
            if not _differs(ca.text, cb.text):
                continue
            sessions = sorted(votes[a][1] | votes[b][1])
            users = sorted(votes[a][2] | votes[b][2])
            yield Pair(
                ca.text,
                cb.text,
                "thumbs",
                1,
                f"candidate:{a}",
                f"candidate:{b}",
                ca.model_version,
                cb.model_version,
                ",".join(sessions),
                ",".join(users),
                is_simulated(rec.session_id, rec.user, *sessions, *users),
            )


def interaction_pairs(rec: InteractionRecord) -> list[Pair]:
    """All pairs one interaction implies: rankings, then corrections, then thumbs."""
    return [*ranking_pairs(rec), *correction_pairs(rec), *thumbs_pairs(rec)]


def demonstrations(rec: InteractionRecord) -> list[Demonstration]:
    """Corrections first (by id), then net-thumbs-up candidates (by position)."""
    demos = [
        Demonstration(
            c.text,
            "correction",
            f"correction:{c.id}",
            "human",
            c.session_id,
            c.user or "",
            is_simulated(rec.session_id, rec.user, c.session_id, c.user),
        )
        for c in rec.corrections
    ]
    votes = thumbs_votes(rec)
    for cand in rec.candidates:
        vote = votes.get(cand.id)
        if vote and vote[0] > 0:
            sessions, users = sorted(vote[1]), sorted(vote[2])
            demos.append(_thumbs_demo(rec, cand, sessions, users))
    return demos


def _thumbs_demo(
    rec: InteractionRecord, cand: CandidateRecord, sessions: list[str], users: list[str]
) -> Demonstration:
    return Demonstration(
        cand.text,
        "thumbs_up",
        f"candidate:{cand.id}",
        cand.model_version,
        ",".join(sessions),
        ",".join(users),
        is_simulated(rec.session_id, rec.user, *sessions, *users),
    )
