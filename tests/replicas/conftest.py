"""A real PostgreSQL server for the replica tests (scripts/pg_test_server.sh, or $RAGQA_TEST_PG_DSN)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pg_test_server.sh"


@pytest.fixture(scope="session")
def replica_pg_server() -> Iterator[str]:
    """Admin DSN of a throwaway server started for this session (skipped, with the reason, if none can be)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the replica test needs psycopg: pip install 'psycopg[binary]>=3.3,<4'")
    if os.environ.get("RAGQA_TEST_PG_DSN"):
        yield os.environ["RAGQA_TEST_PG_DSN"]
        return
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no PostgreSQL server could be started: {proc.stderr.strip()[-300:]}")
    out = dict(line.split("=", 1) for line in proc.stdout.split("\n") if "=" in line)
    try:
        yield out["DSN"]
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", out["DIR"]], check=False)
