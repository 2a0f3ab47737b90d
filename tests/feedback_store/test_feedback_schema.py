"""Migrations: the exact schema a blank database gets, and upgrades from every earlier version."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from feedback_store.errors import FeedbackError
from feedback_store.export import export_snapshot
from feedback_store.migrations import LATEST_VERSION, MIGRATIONS, migrate, schema_version
from feedback_store.store import FeedbackStore

EXPECTED_OBJECTS = [
    ("index", "candidates_by_interaction", "candidates"),
    ("index", "client_tokens_by_session", "client_tokens"),
    ("index", "conversations_by_owner", "conversations"),
    ("index", "corrections_by_interaction", "corrections"),
    ("index", "corrections_by_session", "corrections"),
    ("index", "interactions_by_session", "interactions"),
    ("index", "rankings_by_interaction", "rankings"),
    ("index", "rankings_by_session", "rankings"),
    ("index", "ratings_by_candidate", "ratings"),
    ("index", "ratings_by_session", "ratings"),
    ("index", "sqlite_autoindex_candidates_1", "candidates"),
    ("index", "sqlite_autoindex_client_tokens_1", "client_tokens"),
    ("index", "sqlite_autoindex_conversations_1", "conversations"),
    ("index", "sqlite_autoindex_passages_shown_1", "passages_shown"),
    ("table", "candidates", "candidates"),
    ("table", "client_tokens", "client_tokens"),
    ("table", "conversations", "conversations"),
    ("table", "corrections", "corrections"),
    ("table", "interactions", "interactions"),
    ("table", "passages_shown", "passages_shown"),
    ("table", "rankings", "rankings"),
    ("table", "ratings", "ratings"),
    ("table", "schema_migrations", "schema_migrations"),
]

# (column, declared type, not null, primary key position) per table, in column order.
EXPECTED_COLUMNS = {
    "interactions": [
        ("id", "INTEGER", 0, 1),
        ("question", "TEXT", 1, 0),
        ("context_json", "TEXT", 1, 0),
        ("session_id", "TEXT", 1, 0),
        ("user_name", "TEXT", 0, 0),
        ("created_at", "TEXT", 1, 0),
        ("prompt_json", "TEXT", 0, 0),
    ],
    "passages_shown": [
        ("interaction_id", "INTEGER", 1, 1),
        ("rank", "INTEGER", 1, 2),
        ("chunk_id", "TEXT", 1, 0),
        ("source", "TEXT", 1, 0),
        ("text", "TEXT", 1, 0),
        ("score", "REAL", 0, 0),
    ],
    "candidates": [
        ("id", "INTEGER", 0, 1),
        ("interaction_id", "INTEGER", 1, 0),
        ("position", "INTEGER", 1, 0),
        ("label", "TEXT", 1, 0),
        ("text", "TEXT", 1, 0),
        ("model_version", "TEXT", 1, 0),
        ("sampling_json", "TEXT", 1, 0),
        ("latency_ms", "REAL", 0, 0),
        ("created_at", "TEXT", 1, 0),
    ],
    "rankings": [
        ("id", "INTEGER", 0, 1),
        ("interaction_id", "INTEGER", 1, 0),
        ("order_json", "TEXT", 1, 0),
        ("both_bad", "INTEGER", 1, 0),
        ("session_id", "TEXT", 1, 0),
        ("user_name", "TEXT", 0, 0),
        ("created_at", "TEXT", 1, 0),
    ],
    "ratings": [
        ("id", "INTEGER", 0, 1),
        ("candidate_id", "INTEGER", 1, 0),
        ("up", "INTEGER", 1, 0),
        ("session_id", "TEXT", 1, 0),
        ("user_name", "TEXT", 0, 0),
        ("created_at", "TEXT", 1, 0),
        ("reason", "TEXT", 0, 0),
        ("withdrawn", "INTEGER", 1, 0),
        ("comment", "TEXT", 0, 0),
    ],
    "corrections": [
        ("id", "INTEGER", 0, 1),
        ("interaction_id", "INTEGER", 1, 0),
        ("text", "TEXT", 1, 0),
        ("replaces_json", "TEXT", 1, 0),
        ("session_id", "TEXT", 1, 0),
        ("user_name", "TEXT", 0, 0),
        ("created_at", "TEXT", 1, 0),
    ],
    "client_tokens": [
        ("token", "TEXT", 0, 1),
        ("kind", "TEXT", 1, 0),
        ("request_sha256", "TEXT", 1, 0),
        ("result_json", "TEXT", 1, 0),
        ("session_id", "TEXT", 1, 0),
        ("created_at", "TEXT", 1, 0),
    ],
    "conversations": [
        ("id", "TEXT", 0, 1),
        ("owner", "TEXT", 1, 0),
        ("title", "TEXT", 1, 0),
        ("state_json", "TEXT", 1, 0),
        ("created_at", "TEXT", 1, 0),
        ("updated_at", "TEXT", 1, 0),
    ],
    "schema_migrations": [
        ("version", "INTEGER", 0, 1),
        ("name", "TEXT", 1, 0),
        ("applied_at", "TEXT", 1, 0),
    ],
}


def _objects(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute("SELECT type, name, tbl_name FROM sqlite_master ORDER BY type, name").fetchall()


def _full_schema(conn: sqlite3.Connection) -> list[tuple[str, str, str | None]]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_blank_database_gets_exact_schema(tmp_path: Path) -> None:
    FeedbackStore.open(tmp_path / "f.db").close()
    conn = _raw(tmp_path / "f.db")
    assert _objects(conn) == EXPECTED_OBJECTS
    for table, columns in EXPECTED_COLUMNS.items():
        got = [(r[1], r[2], r[3], r[5]) for r in conn.execute(f"PRAGMA table_info({table})")]
        assert got == columns, table
    applied = conn.execute(
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    ).fetchall()
    assert [(v, n) for v, n, _ in applied] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(at.endswith("Z") and at[:2] == "20" for _, _, at in applied)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # Foreign keys are declared with cascades (they are enforced per connection by the store).
    fks = {(r[2], r[6]) for r in conn.execute("PRAGMA foreign_key_list(ratings)")}
    assert fks == {("candidates", "CASCADE")}


def test_migrations_are_ordered_and_reopen_is_a_no_op(tmp_path: Path) -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))
    assert LATEST_VERSION >= 2
    FeedbackStore.open(tmp_path / "f.db").close()
    conn = _raw(tmp_path / "f.db")
    before = _full_schema(conn)
    assert migrate(conn) == []
    FeedbackStore.open(tmp_path / "f.db").close()
    assert _full_schema(conn) == before
    assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == LATEST_VERSION


def _fill_v1(conn: sqlite3.Connection) -> None:
    """Data as schema v1 code would have written it (no rating reason, no client tokens)."""
    ts = "2026-01-01T00:00:00.000000Z"
    conn.execute(
        "INSERT INTO interactions (id, question, context_json, session_id, user_name, created_at) VALUES (1, 'What is WAL?', '[]', 'old-session', 'olduser', ?)",
        (ts,),
    )
    conn.execute(
        "INSERT INTO passages_shown VALUES (1, 1, 'db.md#0', 'db.md', 'WAL is write-ahead logging.', 0.7)"
    )
    conn.execute(
        "INSERT INTO candidates VALUES (1, 1, 0, 'A', 'Write-ahead logging [1].', 'v0001', '{}', 12.0, ?)",
        (ts,),
    )
    conn.execute(
        "INSERT INTO candidates VALUES (2, 1, 1, 'B', 'A disk.', 'v0001', '{\"seed\": 3}', NULL, ?)", (ts,)
    )
    conn.execute("INSERT INTO rankings VALUES (1, 1, '[[1],[2]]', 0, 'old-session', NULL, ?)", (ts,))
    conn.execute(
        "INSERT INTO ratings (id, candidate_id, up, session_id, user_name, created_at) VALUES (1, 2, 0, 'old-session', NULL, ?)",
        (ts,),
    )


@pytest.mark.parametrize("start", range(1, LATEST_VERSION))
def test_migrate_from_every_earlier_version_preserves_data(tmp_path: Path, start: int) -> None:
    db = tmp_path / "old.db"
    conn = _raw(db)
    assert migrate(conn, target=start) == list(range(1, start + 1))
    assert schema_version(conn) == start
    _fill_v1(conn)
    conn.close()

    with FeedbackStore.open(db) as store:
        assert store.schema_version() == LATEST_VERSION
        rec = store.get_interaction(1)
        assert rec.question == "What is WAL?" and rec.user == "olduser"
        assert [c.text for c in rec.candidates] == ["Write-ahead logging [1].", "A disk."]
        assert rec.candidates[1].sampling == {"seed": 3}
        assert rec.rankings[0].order == ((1,), (2,))
        assert rec.ratings[0].reason is None and rec.ratings[0].up is False
        assert rec.verbatim_prompt is None
        # New features work on migrated data.
        assert store.record_rating(1, True, reason="cites", session_id="new", client_token="t1") == 2
        assert store.record_rating(1, True, reason="cites", session_id="new", client_token="t1") == 2
        stats = store.stats()
        # the ranking pair plus the same pair from the thumbs (de-duplicated only by the export)
        assert (stats["pairs"], stats["ratings_up"], stats["ratings_down"]) == (2, 1, 1)
        manifest = export_snapshot(store, tmp_path / "out", test_fraction=0.0)
        assert store.integrity_check() == "ok"
    rows = [json.loads(x) for x in (tmp_path / "out" / "preferences.train.jsonl").read_text().splitlines()]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("Write-ahead logging [1].", "A disk.")
    ]
    assert manifest.counts["pairs_implied"] == 2  # the ranking pair and the same pair from thumbs

    # A migrated database has exactly the schema of a blank one.
    FeedbackStore.open(tmp_path / "blank.db").close()
    assert _full_schema(_raw(db)) == _full_schema(_raw(tmp_path / "blank.db"))


def test_database_from_newer_code_is_refused(tmp_path: Path) -> None:
    FeedbackStore.open(tmp_path / "f.db").close()
    conn = _raw(tmp_path / "f.db")
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 'x')", (LATEST_VERSION + 1,))
    conn.close()
    with pytest.raises(FeedbackError, match="newer than this code"):
        FeedbackStore.open(tmp_path / "f.db")


def test_failed_migration_rolls_back_whole_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feedback_store import migrations

    broken = (*MIGRATIONS[:1], migrations.Migration(2, "broken", "CREATE TABLE t2 (x);\nSELECT * FROM nope;"))
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    conn = _raw(tmp_path / "f.db")
    with pytest.raises(sqlite3.OperationalError, match="no such table: nope"):
        migrations.migrate(conn, target=2)
    assert schema_version(conn) == 1
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't2'").fetchone() is None
