"""Fixtures for the feedback store tests: a fresh store on each backend and the hand-built history.

`store` runs every test that uses it twice: on a SQLite file and on a database of a REAL PostgreSQL server
(`pg_server`: started once per session by scripts/pg_test_server.sh, as a normal process on a private unix
socket, stopped at the end; or the server named by $RAGQA_TEST_PG_DSN). Each PostgreSQL test gets its own
fresh schema. When no server can be started (no binaries, no psycopg), the PostgreSQL cases are skipped
with the reason (shown by `-ra`).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback_store.store import FeedbackStore
from tests.feedback_store.feedback_history import History, build_history

ROOT = Path(__file__).resolve().parents[2]
_db_names = itertools.count()


def start_pg_server() -> tuple[str, str | None]:
    """(admin DSN, server dir to stop or None) - or pytest.skip with the reason nothing could be started."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests need psycopg: pip install 'psycopg[binary]>=3.3,<4'")
    if os.environ.get("RAGQA_TEST_PG_DSN"):
        return os.environ["RAGQA_TEST_PG_DSN"], None
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "pg_test_server.sh"), "start"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"no PostgreSQL server could be started: {proc.stderr.strip()[-300:]}")
    out = dict(line.split("=", 1) for line in proc.stdout.split("\n") if "=" in line)
    return out["DSN"], out["DIR"]


def stop_pg_server(server_dir: str | None) -> None:
    if server_dir:
        subprocess.run(["bash", str(ROOT / "scripts" / "pg_test_server.sh"), "stop", server_dir], check=False)


def create_schema(admin_dsn: str, prefix: str = "feedback_test") -> str:
    """A new empty schema on the server; returns a DSN whose search_path is that schema only.

    A schema is as isolated as a database for the store (every name it creates or reads resolves through
    search_path) and costs a catalog row instead of copying a template database to disk.
    """
    import psycopg

    name = f"{prefix}_{os.getpid()}_{next(_db_names)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in admin_dsn else "?"
    return f"{admin_dsn}{sep}options=-csearch_path%3D{name}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    dsn, server_dir = start_pg_server()
    try:
        yield dsn
    finally:
        stop_pg_server(server_dir)


@pytest.fixture
def pg_dsn(pg_server: str) -> str:
    """A fresh, empty PostgreSQL schema for one test (see create_schema)."""
    return create_schema(pg_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | Path:
    """Where a fresh store lives: a SQLite file or a fresh PostgreSQL database."""
    if backend == "sqlite":
        return tmp_path / "feedback.db"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def store(store_target: str | Path) -> Iterator[FeedbackStore]:
    with FeedbackStore.open(store_target) as s:
        yield s


@pytest.fixture
def history(store: FeedbackStore) -> History:
    return build_history(store)
