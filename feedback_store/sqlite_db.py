"""The SQLite side of the feedback store: one file, WAL, `BEGIN IMMEDIATE`, errors in words.

`SqliteBackend` is what `FeedbackStore` needs from a database (see `postgres_db.PostgresBackend`, its twin):
connections, how to start a write or a read snapshot, how to stream rows, the integrity check, and the
translation of driver errors into the store's exceptions.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from feedback_store.errors import FeedbackError, FeedbackStoreUnavailable, FeedbackValidationError


def sqlite_path_from_dsn(path_or_dsn: str | Path) -> Path:
    """The SQLite file a path or DSN names: `path`, `sqlite:///relative`, `sqlite:////absolute`."""
    text = str(path_or_dsn)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    elif "://" in text:
        raise FeedbackError(
            f"unsupported feedback store DSN {text!r}; use a file path, sqlite:///path or postgresql://..."
        )
    if text in ("", ":memory:"):
        raise FeedbackError("the feedback store needs a file (readers open their own connections)")
    return Path(text).expanduser()


class SqliteBackend:
    """One SQLite file in WAL mode; the store's single writer connection serialises writes in-process and
    `BEGIN IMMEDIATE` (with busy_timeout) across processes."""

    name = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    lock_for_update = ""  # SQLite locks the whole database for the write transaction already
    forbids_nul = False

    def __init__(self, path: Path, *, busy_timeout_s: float, read_only: bool, synchronous: str) -> None:
        self.path = path
        self.location = str(path)
        self.busy_timeout_s = busy_timeout_s
        self.read_only = read_only
        self.synchronous = synchronous

    def exists(self) -> bool:
        return self.path.exists()

    def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def connect(self, *, write: bool) -> sqlite3.Connection:
        mode = "ro" if (self.read_only or not write) else "rwc"
        conn = sqlite3.connect(
            f"file:{quote(str(self.path.resolve()))}?mode={mode}",
            uri=True,
            timeout=self.busy_timeout_s,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # the writer is shared by threads, guarded by the store's lock
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            if write:
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL by default: in WAL mode NORMAL skips the fsync of the WAL at each commit, so a
                # power cut (not a process crash) can lose the last acknowledged writes. FULL fsyncs the
                # WAL on every COMMIT, so "acknowledged" means "on disk".
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def alive(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        """The writer to use for the next batch (a SQLite connection does not drop)."""
        return conn

    def close_writer(self, conn: sqlite3.Connection) -> None:
        conn.close()

    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A fresh read-only connection (cheap for a file), closed afterwards."""
        try:
            conn = self.connect(write=False)
        except sqlite3.Error as exc:
            raise self.translate(exc) from exc
        try:
            yield conn
        finally:
            conn.close()

    @staticmethod
    def begin_write(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    @staticmethod
    def begin_snapshot(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")  # a read transaction: every later SELECT sees the same WAL snapshot

    @staticmethod
    def stream(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> Iterable[tuple[Any, ...]]:
        return conn.execute(sql, params)

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        return False  # one writer at a time: no deadlocks

    @staticmethod
    def integrity_problems(conn: sqlite3.Connection) -> list[str]:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        fks = conn.execute("PRAGMA foreign_key_check").fetchall()
        return problems + [f"foreign key violation: {tuple(r)}" for r in fks]

    def translate(self, exc: BaseException) -> FeedbackError:
        """Translate a SQLite failure into an error that says what happened and what to do."""
        msg = str(exc).lower()
        what = f"feedback database {self.path}"
        if "locked" in msg or "busy" in msg:
            return FeedbackStoreUnavailable(
                f"the {what} stayed locked by another writer for more than {self.busy_timeout_s:g} s; "
                "nothing was recorded, retry later"
            )
        if "readonly" in msg or "read-only" in msg:
            return FeedbackStoreUnavailable(
                f"the {what} is read-only (file permissions, a read-only mount, or opened read_only); "
                "nothing was recorded"
            )
        if "full" in msg:
            return FeedbackStoreUnavailable(
                f"the {what} cannot grow: the disk (or its size limit) is full; free space and retry. "
                "Nothing was recorded; what was stored before is intact"
            )
        if "unable to open" in msg or "disk i/o" in msg:
            return FeedbackStoreUnavailable(f"cannot open or write the {what}: {exc}")
        if "not a database" in msg or "malformed" in msg:
            return FeedbackStoreUnavailable(f"the {what} is not a SQLite database or is corrupt: {exc}")
        if isinstance(exc, sqlite3.IntegrityError):
            return FeedbackValidationError(f"rejected by the {what}: {exc}")
        return FeedbackStoreUnavailable(f"the {what} failed: {exc}")
