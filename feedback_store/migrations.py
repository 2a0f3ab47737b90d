"""Ordered schema migrations of the feedback database, recorded in `schema_migrations`.

Each migration is `(version, name, sql)`; they are applied in version order, each in its own
`BEGIN IMMEDIATE` transaction together with its row in `schema_migrations`, so a crash leaves the
database at a whole version and two processes opening the same file at once cannot both migrate it.
Never edit a migration that has shipped: add a new one. `tests/feedback_store/test_migrations.py`
pins the exact schema a blank database ends up with, and migrates a database of every earlier
version with data in it.

Schema versions:
  1 core tables: interactions, the passages shown, candidates, rankings, ratings, corrections.
  2 a reason on ratings, and `client_tokens` (idempotent submissions: the same token records once).
  3 `interactions.prompt_json` (the verbatim prompt of imported items that were not rendered by
    retrieval.prompt) and indexes for deleting a rater session.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from feedback_store.errors import FeedbackError


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "core_tables",
        """
        CREATE TABLE interactions (
            id INTEGER PRIMARY KEY,
            question TEXT NOT NULL,
            context_json TEXT NOT NULL DEFAULT '[]',
            session_id TEXT NOT NULL,
            user_name TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE passages_shown (
            interaction_id INTEGER NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            chunk_id TEXT NOT NULL,
            source TEXT NOT NULL,
            text TEXT NOT NULL,
            score REAL,
            PRIMARY KEY (interaction_id, rank)
        );
        CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            interaction_id INTEGER NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            label TEXT NOT NULL,
            text TEXT NOT NULL,
            model_version TEXT NOT NULL,
            sampling_json TEXT NOT NULL DEFAULT '{}',
            latency_ms REAL,
            created_at TEXT NOT NULL,
            UNIQUE (interaction_id, position)
        );
        CREATE TABLE rankings (
            id INTEGER PRIMARY KEY,
            interaction_id INTEGER NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
            order_json TEXT NOT NULL,
            both_bad INTEGER NOT NULL DEFAULT 0 CHECK (both_bad IN (0, 1)),
            session_id TEXT NOT NULL,
            user_name TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE ratings (
            id INTEGER PRIMARY KEY,
            candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
            up INTEGER NOT NULL CHECK (up IN (0, 1)),
            session_id TEXT NOT NULL,
            user_name TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE corrections (
            id INTEGER PRIMARY KEY,
            interaction_id INTEGER NOT NULL REFERENCES interactions(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            replaces_json TEXT NOT NULL DEFAULT '[]',
            session_id TEXT NOT NULL,
            user_name TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX candidates_by_interaction ON candidates(interaction_id, position);
        CREATE INDEX rankings_by_interaction ON rankings(interaction_id);
        CREATE INDEX ratings_by_candidate ON ratings(candidate_id);
        CREATE INDEX corrections_by_interaction ON corrections(interaction_id);
        """,
    ),
    Migration(
        2,
        "rating_reason_and_client_tokens",
        """
        ALTER TABLE ratings ADD COLUMN reason TEXT;
        CREATE TABLE client_tokens (
            token TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            request_sha256 TEXT NOT NULL,
            result_json TEXT NOT NULL,
            session_id TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "imported_prompts_and_session_indexes",
        """
        ALTER TABLE interactions ADD COLUMN prompt_json TEXT;
        CREATE INDEX interactions_by_session ON interactions(session_id);
        CREATE INDEX rankings_by_session ON rankings(session_id);
        CREATE INDEX ratings_by_session ON ratings(session_id);
        CREATE INDEX corrections_by_session ON corrections(session_id);
        CREATE INDEX client_tokens_by_session ON client_tokens(session_id);
        """,
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def split_statements(sql: str) -> Iterator[str]:
    """Yield the complete SQL statements of a script, one at a time.

    `executescript` would commit the surrounding transaction first; executing statement by statement
    keeps a migration and its bookkeeping row in one transaction.
    """
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration version; 0 for a blank database."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, target: int | None = None) -> list[int]:
    """Apply the pending migrations up to `target` (default: the latest); return the versions applied.

    `conn` must be in autocommit mode (`isolation_level=None`). Raises FeedbackError when the database
    was written by newer code (a higher version than this code knows).
    """
    target = LATEST_VERSION if target is None else target
    current = schema_version(conn)
    if current > LATEST_VERSION:
        raise FeedbackError(
            f"the feedback database is at schema version {current}, newer than this code knows "
            f"({LATEST_VERSION}); upgrade rlhf-rag-qa before opening it"
        )
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version > target or migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_BOOKKEEPING)
            # Re-check inside the write lock: another process may have migrated meanwhile.
            if schema_version(conn) >= migration.version:
                conn.execute("ROLLBACK")
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                (migration.version, migration.name),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
