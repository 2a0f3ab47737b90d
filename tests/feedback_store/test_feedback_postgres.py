"""PostgreSQL only, on a real server: the exact schema, migrations, writers in several processes sharing one
store (idempotent client tokens across processes), locks, read-only, a dropped connection, NUL characters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from feedback_store.errors import (
    FeedbackError,
    FeedbackStoreUnavailable,
    FeedbackValidationError,
)
from feedback_store.migrations import LATEST_VERSION, MIGRATIONS, migrate, schema_version
from feedback_store.postgres_db import PgConnection, redacted
from feedback_store.store import FeedbackStore

ROOT = Path(__file__).resolve().parents[2]
CANDS = [{"text": "one", "model_version": "v1"}, {"text": "two", "model_version": "v1"}]

# (column, type, nullable, identity) per table, in column order: PostgreSQL's spelling of the SQLite schema.
EXPECTED_COLUMNS = {
    "interactions": [
        ("id", "bigint", "NO", "YES"),
        ("question", "text", "NO", "NO"),
        ("context_json", "text", "NO", "NO"),
        ("session_id", "text", "NO", "NO"),
        ("user_name", "text", "YES", "NO"),
        ("created_at", "text", "NO", "NO"),
        ("prompt_json", "text", "YES", "NO"),
    ],
    "passages_shown": [
        ("interaction_id", "bigint", "NO", "NO"),
        ("rank", "integer", "NO", "NO"),
        ("chunk_id", "text", "NO", "NO"),
        ("source", "text", "NO", "NO"),
        ("text", "text", "NO", "NO"),
        ("score", "double precision", "YES", "NO"),
    ],
    "candidates": [
        ("id", "bigint", "NO", "YES"),
        ("interaction_id", "bigint", "NO", "NO"),
        ("position", "integer", "NO", "NO"),
        ("label", "text", "NO", "NO"),
        ("text", "text", "NO", "NO"),
        ("model_version", "text", "NO", "NO"),
        ("sampling_json", "text", "NO", "NO"),
        ("latency_ms", "double precision", "YES", "NO"),
        ("created_at", "text", "NO", "NO"),
    ],
    "rankings": [
        ("id", "bigint", "NO", "YES"),
        ("interaction_id", "bigint", "NO", "NO"),
        ("order_json", "text", "NO", "NO"),
        ("both_bad", "integer", "NO", "NO"),
        ("session_id", "text", "NO", "NO"),
        ("user_name", "text", "YES", "NO"),
        ("created_at", "text", "NO", "NO"),
    ],
    "ratings": [
        ("id", "bigint", "NO", "YES"),
        ("candidate_id", "bigint", "NO", "NO"),
        ("up", "integer", "NO", "NO"),
        ("session_id", "text", "NO", "NO"),
        ("user_name", "text", "YES", "NO"),
        ("created_at", "text", "NO", "NO"),
        ("reason", "text", "YES", "NO"),
        ("withdrawn", "integer", "NO", "NO"),
        ("comment", "text", "YES", "NO"),
    ],
    "corrections": [
        ("id", "bigint", "NO", "YES"),
        ("interaction_id", "bigint", "NO", "NO"),
        ("text", "text", "NO", "NO"),
        ("replaces_json", "text", "NO", "NO"),
        ("session_id", "text", "NO", "NO"),
        ("user_name", "text", "YES", "NO"),
        ("created_at", "text", "NO", "NO"),
    ],
    "client_tokens": [
        ("token", "text", "NO", "NO"),
        ("kind", "text", "NO", "NO"),
        ("request_sha256", "text", "NO", "NO"),
        ("result_json", "text", "NO", "NO"),
        ("session_id", "text", "NO", "NO"),
        ("created_at", "text", "NO", "NO"),
    ],
    "conversations": [
        ("id", "text", "NO", "NO"),
        ("owner", "text", "NO", "NO"),
        ("title", "text", "NO", "NO"),
        ("state_json", "text", "NO", "NO"),
        ("created_at", "text", "NO", "NO"),
        ("updated_at", "text", "NO", "NO"),
    ],
    "schema_migrations": [
        ("version", "integer", "NO", "NO"),
        ("name", "text", "NO", "NO"),
        ("applied_at", "text", "NO", "NO"),
    ],
}
EXPECTED_INDEXES = sorted(
    [
        "candidates_by_interaction",
        "client_tokens_by_session",
        "conversations_by_owner",
        "corrections_by_interaction",
        "corrections_by_session",
        "interactions_by_session",
        "rankings_by_interaction",
        "rankings_by_session",
        "ratings_by_candidate",
        "ratings_by_session",
        # primary keys and the unique constraint
        "candidates_interaction_id_position_key",
        "candidates_pkey",
        "client_tokens_pkey",
        "conversations_pkey",
        "corrections_pkey",
        "interactions_pkey",
        "passages_shown_pkey",
        "rankings_pkey",
        "ratings_pkey",
        "schema_migrations_pkey",
    ]
)


def _raw(dsn: str) -> PgConnection:
    return PgConnection(psycopg.connect(dsn, autocommit=True))


def _schema(conn: PgConnection) -> tuple[dict[str, list[tuple]], list[str], set[tuple]]:
    columns: dict[str, list[tuple]] = {}
    for table, col, typ, nullable, identity in conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, is_identity FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ):
        columns.setdefault(table, []).append((col, typ, nullable, identity))
    indexes = [
        r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    ]
    fks = set(
        conn.execute(
            "SELECT tc.table_name, ccu.table_name, rc.delete_rule FROM information_schema.referential_constraints rc "
            "JOIN information_schema.table_constraints tc ON tc.constraint_name = rc.constraint_name "
            "JOIN information_schema.constraint_column_usage ccu ON ccu.constraint_name = rc.constraint_name "
            "AND ccu.constraint_schema = rc.constraint_schema "
            "WHERE rc.constraint_schema = current_schema() AND tc.constraint_schema = current_schema()"
        ).fetchall()
    )
    return columns, sorted(indexes), fks


def test_blank_database_gets_exact_schema(pg_dsn: str) -> None:
    FeedbackStore.open(pg_dsn).close()
    conn = _raw(pg_dsn)
    columns, indexes, fks = _schema(conn)
    assert columns == EXPECTED_COLUMNS
    assert indexes == EXPECTED_INDEXES
    assert fks == {
        ("passages_shown", "interactions", "CASCADE"),
        ("candidates", "interactions", "CASCADE"),
        ("rankings", "interactions", "CASCADE"),
        ("corrections", "interactions", "CASCADE"),
        ("ratings", "candidates", "CASCADE"),
    }
    applied = conn.execute(
        "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
    ).fetchall()
    assert [(v, n) for v, n, _ in applied] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(at.endswith("Z") and at[:2] == "20" for _, _, at in applied)
    # Reopening applies nothing and changes nothing.
    assert migrate(conn) == []
    FeedbackStore.open(pg_dsn).close()
    assert _schema(conn) == (columns, indexes, fks)


@pytest.mark.parametrize("start", range(1, LATEST_VERSION))
def test_migrate_from_every_earlier_version_preserves_data(pg_dsn: str, pg_server: str, start: int) -> None:
    conn = _raw(pg_dsn)
    assert migrate(conn, target=start) == list(range(1, start + 1))
    assert schema_version(conn) == start
    ts = "2026-01-01T00:00:00.000000Z"
    conn.execute(
        "INSERT INTO interactions (id, question, context_json, session_id, user_name, created_at) "
        "VALUES (1, ?, '[]', 'old-session', 'olduser', ?)",  # no `?` inside SQL literals (see PgConnection)
        ("What is WAL?", ts),
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
        "INSERT INTO ratings (id, candidate_id, up, session_id, user_name, created_at) "
        "VALUES (1, 2, 0, 'old-session', NULL, ?)",
        (ts,),
    )
    for table in (
        "interactions",
        "candidates",
        "rankings",
        "ratings",
    ):  # explicit ids: move the identities on
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
    with FeedbackStore.open(pg_dsn) as store:
        assert store.schema_version() == LATEST_VERSION
        rec = store.get_interaction(1)
        assert rec.question == "What is WAL?" and rec.user == "olduser"
        assert rec.passages[0]["score"] == 0.7  # DOUBLE PRECISION: no float4 rounding
        assert rec.candidates[1].sampling == {"seed": 3} and rec.ratings[0].reason is None
        assert store.record_rating(1, True, reason="cites", session_id="new", client_token="t1") == 2
        assert store.record_rating(1, True, reason="cites", session_id="new", client_token="t1") == 2
        assert store.integrity_check() == "ok"
    blank = create_blank(pg_server)
    assert _schema(conn) == _schema(_raw(blank))


def create_blank(pg_server: str) -> str:
    from tests.feedback_store.conftest import create_schema

    dsn = create_schema(pg_server, "blank")
    FeedbackStore.open(dsn).close()
    return dsn


def test_failed_migration_rolls_back_whole_version(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from feedback_store import migrations

    broken = (
        *MIGRATIONS[:1],
        migrations.Migration(2, "broken", "CREATE TABLE t2 (x int);\nSELECT * FROM nope;"),
    )
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    conn = _raw(pg_dsn)
    with pytest.raises(psycopg.errors.UndefinedTable, match="nope"):
        migrations.migrate(conn, target=2)
    assert schema_version(conn) == 1
    assert conn.execute("SELECT to_regclass('t2')").fetchone()[0] is None


def test_database_from_newer_code_is_refused(pg_dsn: str) -> None:
    FeedbackStore.open(pg_dsn).close()
    _raw(pg_dsn).execute("INSERT INTO schema_migrations VALUES (?, 'future', 'x')", (LATEST_VERSION + 1,))
    with pytest.raises(FeedbackError, match="newer than this code"):
        FeedbackStore.open(pg_dsn)


PROCESS_WRITER = textwrap.dedent(
    """
    import json, sys, threading
    from feedback_store.store import FeedbackStore
    dsn, name, iid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = FeedbackStore.open(dsn)
    out, lock = [], threading.Lock()
    def work(t):
        for n in range(40):
            # every other write uses a token that the other process submits too, at about the same time
            shared = n % 2 == 0
            token = f"shared-{t}-{n}" if shared else f"{name}-{t}-{n}"
            ids = store.record_interaction(
                f"q {t}/{n}" if shared else f"q {name} {t}/{n}", [], [{"text": "a", "model_version": "v"}],
                session_id="s", client_token=token)
            extra = store.add_candidates(iid, [{"text": f"{name}{t}{n}", "model_version": "v"}])
            with lock:
                out.append([token, ids.interaction_id, list(ids.candidate_ids), extra])
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    store.close()
    print(json.dumps(out))
    """
)


def test_two_processes_share_one_store_and_tokens_record_once(pg_dsn: str) -> None:
    """Two processes x 4 threads: every acknowledged write is stored once, a token sent by both processes records
    one interaction (both get its ids), and candidates added to one interaction by both get distinct positions."""
    with FeedbackStore.open(pg_dsn) as store:
        target = store.record_interaction("shared target", [], CANDS, session_id="s").interaction_id
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_WRITER, pg_dsn, name, str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for name in ("p1", "p2")
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    by_token: dict[str, list] = {}
    for rows in results:
        for token, iid, cids, _extra in rows:
            by_token.setdefault(token, []).append((iid, cids))
    assert len(by_token) == 4 * 20 + 2 * 4 * 20  # 80 tokens sent by both processes + 80 own per process
    assert sum(len(a) == 2 for a in by_token.values()) == 80
    for token, acks in by_token.items():
        assert len({json.dumps(a) for a in acks}) == 1, f"{token} recorded twice: {acks}"
    with FeedbackStore.open(pg_dsn) as store:
        records = {r.id: r for r in store.iter_interactions()}
        stored = {iid for iid in records if iid != target}
        assert stored == {acks[0][0] for acks in by_token.values()}
        for acks in by_token.values():
            iid, cids = acks[0]
            assert [c.id for c in records[iid].candidates] == cids
        added = [c for rows in results for *_, extra in rows for c in extra]
        cands = records[target].candidates
        assert sorted(c.id for c in cands[2:]) == sorted(added) and len(added) == 2 * 4 * 40
        assert [c.position for c in cands] == list(range(len(cands)))  # no position handed out twice
        assert store.integrity_check() == "ok"


def test_locked_table_is_unavailable_and_loses_nothing(pg_dsn: str) -> None:
    with FeedbackStore.open(pg_dsn, busy_timeout_s=0.3) as store:
        ids = store.record_interaction("Q?", [], CANDS, session_id="s")
        other = _raw(pg_dsn)
        other.execute("BEGIN")
        other.execute("LOCK TABLE rankings IN ACCESS EXCLUSIVE MODE")  # another replica holding a lock
        with pytest.raises(FeedbackStoreUnavailable, match=r"locked by another writer for more than 0.3 s"):
            store.record_ranking(ids.interaction_id, [[1], [2]], session_id="s")
        other.execute("ROLLBACK")
        assert store.record_ranking(ids.interaction_id, [[1], [2]], session_id="s") >= 1
        assert store.stats()["rankings"] == 1


def test_read_only_and_unmigrated(pg_dsn: str) -> None:
    with pytest.raises(FeedbackStoreUnavailable, match="schema v0, this code needs"):
        FeedbackStore.open(pg_dsn, read_only=True)
    with FeedbackStore.open(pg_dsn) as rw:
        rw.record_interaction("Q?", [], CANDS, session_id="s")
    with FeedbackStore.open(pg_dsn, read_only=True) as ro:
        assert ro.count_interactions() == 1
        with pytest.raises(FeedbackStoreUnavailable, match="read-only"):
            ro.record_rating(1, True, session_id="s")


def test_dropped_connection_is_replaced(pg_dsn: str, pg_server: str) -> None:
    """The server ends the writer's session (a restart, an admin): the next write reconnects and succeeds."""
    with FeedbackStore.open(pg_dsn) as store:
        store.record_interaction("before", [], CANDS, session_id="s")
        pid = store._writer.raw.info.backend_pid
        with psycopg.connect(pg_server, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0] is True
        assert store.record_interaction("after", [], CANDS, session_id="s").interaction_id == 2
        assert [r.question for r in store.iter_interactions()] == ["before", "after"]


def test_nul_character_is_a_clear_error(pg_dsn: str) -> None:
    with FeedbackStore.open(pg_dsn) as store:
        with pytest.raises(FeedbackValidationError, match="question contains a NUL character"):
            store.record_interaction("a\x00b", [], CANDS, session_id="s")
        with pytest.raises(FeedbackValidationError, match="NUL"):
            store.record_interaction(
                "q", [{"source": "s", "text": "t", "chunk_id": "c\x00"}], CANDS, session_id="s"
            )
        assert store.count_interactions() == 0


@pytest.mark.parametrize(("mode", "setting"), [("FULL", "on"), ("NORMAL", "off")])
def test_synchronous_setting(pg_dsn: str, mode: str, setting: str) -> None:
    with FeedbackStore.open(pg_dsn, synchronous=mode) as store:
        assert store._writer.execute("SHOW synchronous_commit").fetchone()[0] == setting
        assert store.backend == "postgresql"


def test_password_never_shown() -> None:
    assert redacted("postgresql://u:secret@db.example:5433/fb") == "postgresql://u@db.example:5433/fb"
    assert redacted("postgresql://u:secret@/fb?host=/tmp/x") == "postgresql://u@/fb?host=/tmp/x"
    with pytest.raises(FeedbackStoreUnavailable) as err:
        FeedbackStore.open("postgresql://u:secret@nosuchhost.invalid/fb", busy_timeout_s=1)
    assert "secret" not in str(err.value)


def test_cli_uses_the_dsn_from_the_environment(pg_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import argparse

    from feedback_store.commands import add_commands
    from tests.feedback_store.feedback_history import build_history

    with FeedbackStore.open(pg_dsn) as store:
        build_history(store)
    monkeypatch.setenv("RAGQA_FEEDBACK_DSN", pg_dsn)
    parser = argparse.ArgumentParser(prog="ragqa")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["feedback", "stats", "--json"])
    assert args.func(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["interactions"], stats["pairs"]) == (3, 4)
