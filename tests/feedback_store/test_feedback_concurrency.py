"""8 threads x 200 mixed writes through one shared store: every acknowledged write is stored exactly once.

On SQLite and on PostgreSQL (`store_target`); writers in several processes: test_feedback_postgres.py."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from feedback_store.store import FeedbackStore

THREADS = 8
WRITES = 200


def _submit(store: FeedbackStore, kind: str, t: int, n: int, token: str, target) -> object:
    session = f"thread-{t}"
    if kind == "interaction":
        return store.record_interaction(
            f"question {t}/{n}",
            [{"source": "s.md", "text": f"passage {n}"}],
            [
                {"text": f"answer {t}/{n} a", "model_version": "v1"},
                {"text": f"answer {t}/{n} b", "model_version": "v1"},
            ],
            session_id=session,
            client_token=token,
        )
    iid, (a, b) = target
    if kind == "ranking":
        return store.record_ranking(iid, [[a], [b]], session_id=session, client_token=token)
    if kind == "rating":
        return store.record_rating(a, True, session_id=session, client_token=token)
    return store.record_correction(iid, f"fix {t}/{n}", replaces=[b], session_id=session, client_token=token)


def _worker(store: FeedbackStore, t: int, acked: dict[str, object], errors: list[BaseException]) -> None:
    rng = random.Random(t)
    mine: list[tuple[int, tuple[int, ...]]] = []
    try:
        for n in range(WRITES):
            token = f"t{t}-w{n}"
            kind = rng.choice(["interaction", "ranking", "rating", "correction"]) if mine else "interaction"
            target = rng.choice(mine) if mine else None
            result = _submit(store, kind, t, n, token, target)
            if rng.random() < 0.1:  # a client retry while other threads write: must not record twice
                assert _submit(store, kind, t, n, token, target) == result
            if kind == "interaction":
                mine.append((result.interaction_id, result.candidate_ids))
            acked[token] = (kind, result, target)
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        errors.append(exc)


def test_concurrent_writers_every_acknowledged_write_once(store_target: str | Path) -> None:
    acked: dict[str, object] = {}
    errors: list[BaseException] = []
    with FeedbackStore.open(store_target) as store:
        threads = [threading.Thread(target=_worker, args=(store, t, acked, errors)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(acked) == THREADS * WRITES

        records = {r.id: r for r in store.iter_interactions()}
        by_kind: dict[str, list[object]] = {"interaction": [], "ranking": [], "rating": [], "correction": []}
        for kind, result, _ in acked.values():
            by_kind[kind].append(result)
        # Interactions: exactly the acknowledged ones, each with its own two candidates.
        assert sorted(r.interaction_id for r in by_kind["interaction"]) == sorted(records)
        for ids in by_kind["interaction"]:
            assert tuple(c.id for c in records[ids.interaction_id].candidates) == ids.candidate_ids
        stored_rankings = [r.id for rec in records.values() for r in rec.rankings]
        stored_ratings = [r.id for rec in records.values() for r in rec.ratings]
        stored_corrections = [c.id for rec in records.values() for c in rec.corrections]
        assert sorted(stored_rankings) == sorted(by_kind["ranking"])
        assert sorted(stored_ratings) == sorted(by_kind["rating"])
        assert sorted(stored_corrections) == sorted(by_kind["correction"])
        # Retrying acknowledged writes with their tokens changes nothing and returns the same ids.
        before = store.stats()
        for token, (kind, result, target) in list(acked.items())[::16]:
            t, n = (int(x[1:]) for x in token.split("-"))
            assert _submit(store, kind, t, n, token, target) == result
        assert store.stats() == before
        assert store.integrity_check() == "ok"
