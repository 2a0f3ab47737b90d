"""Which preference pairs and demonstrations the recorded feedback implies (pure functions).

Rules (the export, `stats()` and the tests share them):
- ranking: groups best first; every candidate of group i is preferred over every candidate of group
  j > i, with margin j - i. A tie (same group) gives no pair; a "both bad" ranking gives none (its
  candidates become unpaired `label: false` rows instead). A rater may revise a ranking: only the latest
  ranking of a rater session over the same set of candidates counts.
- correction: the written answer is preferred over each candidate it replaces (margin 1).
- thumbs: within one interaction, each net-thumbs-up candidate is preferred over each net-thumbs-down
  one (margin 1). A candidate's net vote counts the latest rating of each rater session; a session
  whose latest rating is a withdrawal (the rater un-liked) does not count at all.
- pairs whose two texts are equal after whitespace normalisation carry no preference and are dropped.
- demonstrations: every correction (an answer a person wrote). A thumbs-up does NOT make a
  demonstration: it says the model's own answer was acceptable, which is a `label: true` row of the
  unpaired (KTO) data; fine-tuning on the model's own outputs would mostly teach it its own style.
- unpaired ratings: the latest rating of each rater session on each candidate (withdrawals give
  nothing), plus `label: false` for each candidate of a latest "both bad" ranking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from feedback_store.records import InteractionRecord, RankingRecord, RatingRecord, is_simulated


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
class UnpairedRating:
    """One answer judged alone: good (label True) or bad; TRL's unpaired preference (KTO) example."""

    text: str
    label: bool
    source: str  # thumbs | both_bad
    candidate_id: int
    model: str  # the model version that wrote the answer
    reason: str | None
    comment: str | None
    feedback_id: str  # "rating:<id>" or "ranking:<id>"
    rater: str
    user: str
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


def latest_rankings(rec: InteractionRecord) -> list[RankingRecord]:
    """The rankings that count: the latest of each rater session over each set of candidates (by id)."""
    latest: dict[tuple[str, frozenset[int]], RankingRecord] = {}
    for ranking in sorted(rec.rankings, key=lambda r: r.id):
        ranked = frozenset(c for group in ranking.order for c in group)
        latest[(ranking.session_id, ranked)] = ranking
    return sorted(latest.values(), key=lambda r: r.id)


def latest_ratings(rec: InteractionRecord) -> list[RatingRecord]:
    """The latest rating of each rater session on each candidate, withdrawals dropped, in id order."""
    latest: dict[tuple[int, str], RatingRecord] = {}
    for r in sorted(rec.ratings, key=lambda r: r.id):
        latest[(r.candidate_id, r.session_id)] = r
    return sorted((r for r in latest.values() if not r.withdrawn), key=lambda r: r.id)


def ranking_pairs(rec: InteractionRecord) -> Iterator[Pair]:
    cands = {c.id: c for c in rec.candidates}
    for ranking in latest_rankings(rec):
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
    votes: dict[int, tuple[int, set[str], set[str]]] = {}
    for r in latest_ratings(rec):
        net, sessions, users = votes.get(r.candidate_id, (0, set(), set()))
        sessions.add(r.session_id)
        if r.user:
            users.add(r.user)
        votes[r.candidate_id] = (net + (1 if r.up else -1), sessions, users)
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
    """Every correction (an answer a rater wrote), by id."""
    return [
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


def unpaired_ratings(rec: InteractionRecord) -> list[UnpairedRating]:
    """Thumbs that count (latest per rater session, not withdrawn), then "both bad" candidates."""
    cands = {c.id: c for c in rec.candidates}
    out = [
        UnpairedRating(
            cands[r.candidate_id].text,
            r.up,
            "thumbs",
            r.candidate_id,
            cands[r.candidate_id].model_version,
            r.reason,
            r.comment,
            f"rating:{r.id}",
            r.session_id,
            r.user or "",
            is_simulated(rec.session_id, rec.user, r.session_id, r.user),
        )
        for r in latest_ratings(rec)
    ]
    for ranking in latest_rankings(rec):
        if not ranking.both_bad:
            continue
        for cid in (c for group in ranking.order for c in group):
            out.append(
                UnpairedRating(
                    cands[cid].text,
                    False,
                    "both_bad",
                    cid,
                    cands[cid].model_version,
                    "both bad",
                    None,
                    f"ranking:{ranking.id}",
                    ranking.session_id,
                    ranking.user or "",
                    is_simulated(rec.session_id, rec.user, ranking.session_id, ranking.user),
                )
            )
    return out
