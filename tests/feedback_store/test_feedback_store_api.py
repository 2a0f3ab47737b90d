"""FeedbackStore API: recording, validation, idempotency, stats, deletion, and failures of the database."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from feedback_store.errors import (
    FeedbackConflict,
    FeedbackError,
    FeedbackNotFound,
    FeedbackStoreUnavailable,
    FeedbackValidationError,
)
from feedback_store.store import FeedbackStore
from tests.feedback_store.feedback_history import PASSAGES_1, History, build_history

CANDS = [{"text": "one", "model_version": "v1"}, {"text": "two", "model_version": "v1"}]


def _interaction(store: FeedbackStore, **kw: object):
    return store.record_interaction("Q?", PASSAGES_1, CANDS, session_id="s", **kw)


def test_records_everything_shown(store: FeedbackStore, history: History) -> None:
    rec = store.get_interaction(history.i1)
    assert rec.question == "When does the library open?"
    assert [p["chunk_id"] for p in rec.passages] == ["guide.md#0", "guide.md#1"]
    assert rec.passages[1]["text"] == "On Sundays  the library\nis closed."  # snapshot kept verbatim
    assert [p["score"] for p in rec.passages] == [0.9, 0.5]
    assert [(c.label, c.position, c.model_version) for c in rec.candidates] == [
        ("A", 0, "v0001"),
        ("B", 1, "v0001"),
        ("C", 2, "v0002"),
    ]
    assert rec.candidates[1].sampling == {"seed": 2, "temperature": 0.7}
    assert rec.candidates[2].latency_ms == 812.5
    assert rec.rankings[0].order == ((history.a1,), (history.b1, history.c1))
    assert rec.simulated and rec.origin == "live"
    assert rec.corrections[0].replaces == (history.b1,) and rec.corrections[0].user == "alice"
    rec2 = store.get_interaction(history.i2)
    assert rec2.context[0] == {"role": "user", "content": "When does the library open?"}
    assert [(r.up, r.reason) for r in rec2.ratings] == [(True, None), (False, "wrong: it is closed")]
    # The prompt is THE prompt format, with the passages in rank order and the history.
    prompt = rec2.prompt_messages()
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[-1]["content"].startswith(
        "Passages:\n[1] (source: guide.md)\nOn Sundays the library is closed."
    )


def test_add_candidates_continues_labels(store: FeedbackStore) -> None:
    ids = _interaction(store)
    new = store.add_candidates(ids.interaction_id, [{"text": "three", "model_version": "v2"}])
    assert new == [ids.candidate_ids[-1] + 1]
    rec = store.get_interaction(ids.interaction_id)
    assert [c.label for c in rec.candidates] == ["A", "B", "C"]
    store.record_ranking(ids.interaction_id, [[new[0]], list(ids.candidate_ids)], session_id="r")
    with pytest.raises(FeedbackNotFound, match="no interaction with id 99"):
        store.add_candidates(99, CANDS)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, i: s.record_ranking(i.interaction_id, [], session_id="r"), "ranking is empty"),
        (lambda s, i: s.record_ranking(i.interaction_id, [[1], []], session_id="r"), "empty group"),
        (lambda s, i: s.record_ranking(i.interaction_id, [[1], [1]], session_id="r"), "appears twice"),
        (lambda s, i: s.record_ranking(i.interaction_id, [[1, 2, 1]], session_id="r"), "appears twice"),
        (
            lambda s, i: s.record_ranking(i.interaction_id, [[1], [3]], session_id="r"),
            r"candidates \[3\] are not",
        ),
        (lambda s, i: s.record_ranking(42, [[1]], session_id="r"), "no interaction with id 42"),
        (lambda s, i: s.record_rating(77, True, session_id="r"), "no candidate with id 77"),
        (lambda s, i: s.record_correction(i.interaction_id, "  \n", session_id="r"), "correction is empty"),
        (
            lambda s, i: s.record_correction(i.interaction_id, " one\n", replaces=[1], session_id="r"),
            "identical to candidate 1",
        ),
        (
            lambda s, i: s.record_correction(i.interaction_id, "x", replaces=[9], session_id="r"),
            "candidate 9 is not",
        ),
        (lambda s, i: s.record_correction(5, "x", session_id="r"), "no interaction with id 5"),
        (lambda s, i: s.record_interaction("", [], CANDS, session_id="r"), "question is empty"),
        (lambda s, i: s.record_interaction("q", [], [], session_id="r"), "at least one candidate"),
        (lambda s, i: s.record_interaction("q", [], CANDS, session_id=""), "session_id must be"),
        (
            lambda s, i: s.record_interaction("q", [], [{"text": "x"}], session_id="r"),
            "model_version must be",
        ),
        (
            lambda s, i: s.record_interaction("q" * 100_001, [], CANDS, session_id="r"),
            "more than the limit of 100000",
        ),
        (
            lambda s, i: s.record_interaction(
                "q", [{"source": "s", "text": "t" * 100_001}], CANDS, session_id="r"
            ),
            "passage 1 text has 100001",
        ),
    ],
)
def test_validation_errors_are_clear_and_write_nothing(store: FeedbackStore, call, message: str) -> None:
    ids = _interaction(store)
    before = store.stats()
    with pytest.raises(FeedbackValidationError, match=message):
        call(store, ids)
    assert store.stats() == before


def test_max_text_chars_is_configurable(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "f.db", max_text_chars=10) as store:
        ids = store.record_interaction(
            "0123456789", [], [{"text": "short", "model_version": "v"}], session_id="s"
        )
        with pytest.raises(FeedbackValidationError, match="more than the limit of 10"):
            store.record_correction(ids.interaction_id, "01234567890", session_id="s")


def test_client_token_records_once(store: FeedbackStore) -> None:
    first = _interaction(store, client_token="tok-1")
    again = _interaction(store, client_token="tok-1")
    assert again == first
    assert store.stats()["interactions"] == 1
    r1 = store.record_ranking(first.interaction_id, [[1], [2]], session_id="s", client_token="tok-2")
    assert store.record_ranking(first.interaction_id, [[1], [2]], session_id="s", client_token="tok-2") == r1
    c1 = store.record_correction(
        first.interaction_id, "fixed", replaces=[2], session_id="s", client_token="tok-3"
    )
    assert (
        store.record_correction(
            first.interaction_id, "fixed", replaces=[2], session_id="s", client_token="tok-3"
        )
        == c1
    )
    assert store.add_candidates(first.interaction_id, CANDS, client_token="tok-4") == [3, 4]
    assert store.add_candidates(first.interaction_id, CANDS, client_token="tok-4") == [3, 4]
    s = store.stats()
    assert (s["interactions"], s["rankings"], s["corrections"], s["candidates"]) == (1, 1, 1, 4)
    with pytest.raises(FeedbackConflict, match="already used for a different ranking"):
        store.record_ranking(first.interaction_id, [[2], [1]], session_id="s", client_token="tok-2")
    with pytest.raises(FeedbackConflict):
        store.record_rating(1, True, session_id="s", client_token="tok-2")


def test_stats_hand_computed(store: FeedbackStore, history: History) -> None:
    s = store.stats()
    # pairs: ranking A1>B1, A1>C1; correction>B1; thumbs A2>B2. Demos: the correction only
    # (a thumbs-up is unpaired data, not a demonstration).
    assert {
        k: s[k] for k in ("interactions", "candidates", "rankings", "both_bad", "pairs", "demonstrations")
    } == {
        "interactions": 3,
        "candidates": 7,
        "rankings": 2,
        "both_bad": 1,
        "pairs": 4,
        "demonstrations": 1,
    }
    assert (s["ratings_up"], s["ratings_down"], s["corrections"]) == (1, 1, 1)
    assert s["ratings_withdrawn"] == 0
    assert (s["raters"], s["simulated_raters"]) == (4, 1)  # simulated:f1, s-alice, s-bob, s-carol
    assert s["per_model_version"] == {
        "v0001": {"candidates": 2, "up": 0, "down": 0, "wins": 2, "losses": 2},
        "v0002": {"candidates": 5, "up": 1, "down": 1, "wins": 1, "losses": 2},
    }


def test_delete_session(store: FeedbackStore, history: History) -> None:
    store.record_rating(history.a1, True, session_id="s-bob", client_token="bob-tok")
    # s-bob asked interaction 2 (its candidates and ratings go with it) and rated A1.
    assert store.delete_session("s-bob") == 1 + 2 + 1
    with pytest.raises(FeedbackNotFound):
        store.get_interaction(history.i2)
    assert store.get_interaction(history.i1).ratings == ()
    s = store.stats()
    assert (s["interactions"], s["candidates"], s["ratings_up"]) == (2, 5, 0)
    # The token is forgotten with the session: the same token now records anew.
    store.record_rating(history.a1, True, session_id="s-bob", client_token="bob-tok")
    assert store.stats()["ratings_up"] == 1
    assert store.delete_session("nobody") == 0
    assert store.integrity_check() == "ok"


def test_locked_database_is_unavailable_and_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    with FeedbackStore.open(db, busy_timeout_s=0.2) as store:
        ids = _interaction(store)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(FeedbackStoreUnavailable, match=r"locked by another writer for more than 0.2 s"):
            store.record_ranking(ids.interaction_id, [[1], [2]], session_id="s")
        other.execute("ROLLBACK")
        other.close()
        assert store.record_ranking(ids.interaction_id, [[1], [2]], session_id="s") == 1
        assert store.stats()["rankings"] == 1
        assert store.integrity_check() == "ok"


def test_read_only_database(tmp_path: Path, history_db: Path) -> None:
    with FeedbackStore.open(history_db, read_only=True) as ro:
        assert ro.stats()["interactions"] == 3
        with pytest.raises(FeedbackStoreUnavailable, match="read-only"):
            ro.record_rating(1, True, session_id="s")
        assert ro.integrity_check() == "ok"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_file(history_db: Path) -> None:
    os.chmod(history_db, 0o444)
    try:
        with (
            pytest.raises(FeedbackStoreUnavailable, match="read-only"),
            FeedbackStore.open(history_db) as store,
        ):
            store.record_rating(1, True, session_id="s")
    finally:
        os.chmod(history_db, 0o644)


def test_disk_full_rolls_back_and_keeps_acknowledged_writes(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "f.db") as store:
        acknowledged = [_interaction(store).interaction_id for _ in range(5)]
        # Simulate a full disk: forbid the file to grow beyond its current size (the writer's connection).
        pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
        store._writer.execute(f"PRAGMA max_page_count = {pages + 1}")
        big = [{"text": "x" * 50_000, "model_version": "v"}] * 3
        with pytest.raises(FeedbackStoreUnavailable, match="disk .* is full") as err:
            for _ in range(10):
                store.record_interaction("fill", [], big, session_id="s")
        assert "Nothing was recorded" in str(err.value)
        assert store.integrity_check() == "ok"
        assert [r.id for r in store.iter_interactions()][: len(acknowledged)] == acknowledged
        assert all(r.question in ("Q?", "fill") for r in store.iter_interactions())
        # The writer is usable again once space is back.
        store._writer.execute("PRAGMA max_page_count = 1073741823")
        assert store.record_interaction("after", [], CANDS, session_id="s").interaction_id > acknowledged[-1]


def test_open_rejects_unsupported_targets(tmp_path: Path) -> None:
    with pytest.raises(FeedbackStoreUnavailable, match="cannot reach the feedback database postgresql://u@"):
        FeedbackStore.open("postgresql://u:secret@nosuchhost.invalid/db", busy_timeout_s=1)
    with pytest.raises(FeedbackError, match="unsupported feedback store DSN"):
        FeedbackStore.open("mysql://u@h/db")
    with pytest.raises(FeedbackError, match="needs a file"):
        FeedbackStore.open(":memory:")
    with FeedbackStore.open(f"sqlite:///{tmp_path}/dsn.db") as s:
        assert s.path == tmp_path / "dsn.db"
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(FeedbackStoreUnavailable, match="not a SQLite database"):
        FeedbackStore.open(tmp_path / "junk.db")


def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = FeedbackStore.open(tmp_path / "f.db")
    store.close()
    with pytest.raises(FeedbackError, match="closed"):
        _interaction(store)


@pytest.fixture
def history_db(tmp_path: Path) -> Path:

    db = tmp_path / "h.db"
    with FeedbackStore.open(db) as s:
        build_history(s)
    return db


@pytest.mark.parametrize(("mode", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_synchronous_setting(tmp_path: Path, mode: str, level: int) -> None:
    with FeedbackStore.open(tmp_path / "f.db", synchronous=mode) as store:
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == level
        assert store._writer.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(FeedbackError, match="synchronous must be FULL or NORMAL"):
        FeedbackStore.open(tmp_path / "g.db", synchronous="OFF")


def test_store_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, feedback_store.export, feedback_store.importer, feedback_store.commands; " + (
        "print(sorted(m for m in ('torch', 'trl', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
