"""The PostgreSQL side of the feedback store, so several app replicas can share one store.

`PostgresBackend` is the twin of `sqlite_db.SqliteBackend`: the store runs the same SQL (written with `?`
placeholders; `PgConnection` turns them into psycopg's `%s`) and the same group commit on one writer
connection per process. What differs, and why:
  - several processes write at once, so the transaction boundary is plain `BEGIN` (READ COMMITTED): inserts
    do not conflict, client tokens are claimed with `INSERT ... ON CONFLICT DO NOTHING` on their primary key
    (a second process with the same token waits for the first one's commit, then replays its result), and
    adding candidates locks the interaction row (`FOR NO KEY UPDATE`) so positions are not handed out twice;
  - a deadlock or serialization failure rolls the whole batch back and the store runs it again;
  - `lock_timeout` = busy_timeout_s, so a lock held too long is FeedbackStoreUnavailable as on SQLite;
  - synchronous="FULL" is `synchronous_commit = on` (the commit is flushed on the server before the call
    returns), "NORMAL" is `off` (survives an app crash, not a server crash);
  - reads take a REPEATABLE READ, READ ONLY snapshot and stream through server-side cursors;
  - a dropped connection (server restart) is replaced before the next batch; that batch itself fails with
    FeedbackStoreUnavailable and nothing of it is acknowledged.
psycopg (3) is imported only here, only when a `postgresql://` DSN is opened: it is the optional extra
`postgres`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from feedback_store.errors import FeedbackError, FeedbackStoreUnavailable, FeedbackValidationError

DSN_PREFIXES = ("postgresql://", "postgres://")
_IDLE_READERS = 4  # reader connections kept open between reads (a connect costs a few ms)


def is_postgres_dsn(target: object) -> bool:
    return isinstance(target, str) and target.startswith(DSN_PREFIXES)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise FeedbackError(
            "a postgresql:// feedback store needs the psycopg driver: pip install 'rlhf-rag-qa[postgres]' "
            "(or pip install 'psycopg[binary]>=3.3,<4')"
        ) from None
    return psycopg


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages and the export manifest."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: the DSN does not parse
        raise FeedbackError(f"invalid PostgreSQL DSN: {exc}") from None
    user = parts.get("user") or ""
    host = parts.get("host") or ""
    port = parts.get("port") or ""
    db = parts.get("dbname") or ""
    if host and not host.startswith("/"):
        return f"postgresql://{user}@{host}{':' + port if port else ''}/{db}"
    query = "&".join(f"{k}={v}" for k, v in (("host", host), ("port", port)) if v)
    return f"postgresql://{user}@/{db}" + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """`?` placeholders -> `%s` (and a literal `%` -> `%%`); our SQL has no `?` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConnection:
    """A psycopg connection (autocommit; we send BEGIN/COMMIT ourselves) with sqlite3's calling convention."""

    dialect = "postgresql"

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        cur = self.raw.cursor()
        if params:
            cur.execute(_pyformat(sql), tuple(params))
        else:
            cur.execute(sql)
        return cur

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_pyformat(sql), [tuple(p) for p in seq])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    @property
    def usable(self) -> bool:
        return not (self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()


class PostgresBackend:
    """A PostgreSQL database named by a DSN; tables in the connection's default schema (search_path)."""

    name = "postgresql"
    lock_for_update = " FOR NO KEY UPDATE"  # blocks another add_candidates, not foreign-key checks
    forbids_nul = True  # PostgreSQL text cannot hold U+0000

    def __init__(self, dsn: str, *, busy_timeout_s: float, read_only: bool, synchronous: str) -> None:
        psycopg = _psycopg()
        self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.dsn = dsn
        self.location = redacted(dsn)
        self.busy_timeout_s = busy_timeout_s
        self.read_only = read_only
        self.synchronous = synchronous
        self._idle: list[PgConnection] = []
        self._idle_lock = threading.Lock()
        self._cursor_names = itertools.count()

    def exists(self) -> bool:
        return True  # a server database always "exists"; the schema check says whether it is usable

    def prepare(self) -> None:
        pass

    def connect(self, *, write: bool) -> PgConnection:
        psycopg = _psycopg()
        raw = psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(2, int(self.busy_timeout_s + 0.999)),
            application_name="ragqa-feedback-store",
        )
        try:
            raw.execute(f"SET lock_timeout = {int(self.busy_timeout_s * 1000)}")
            raw.execute(f"SET synchronous_commit = {'on' if self.synchronous == 'FULL' else 'off'}")
            if self.read_only or not write:
                raw.execute("SET default_transaction_read_only = on")
        except BaseException:
            raw.close()
            raise
        return PgConnection(raw)

    def alive(self, conn: PgConnection) -> PgConnection:
        """The writer to use for the next batch: the same one, or a new one if the old one dropped."""
        if conn.usable:
            return conn
        with contextlib.suppress(Exception):
            conn.close()
        return self.connect(write=True)

    def close_writer(self, conn: PgConnection) -> None:
        conn.close()
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    @contextlib.contextmanager
    def reader(self) -> Iterator[PgConnection]:
        """A read-only connection from a small idle list (or a new one); returned when done."""
        conn = None
        with self._idle_lock:
            while self._idle and conn is None:
                c = self._idle.pop()
                conn = c if c.usable else None
        if conn is None:
            try:
                conn = self.connect(write=False)
            except self.errors as exc:
                raise self.translate(exc) from exc
        try:
            yield conn
        finally:
            self._release(conn)

    def _release(self, conn: PgConnection) -> None:
        try:
            if conn.usable and conn.in_transaction:
                conn.execute("ROLLBACK")  # ends the snapshot and closes its server-side cursors
        except Exception:  # noqa: BLE001 - a reader that cannot roll back is simply dropped
            conn.close()
        with self._idle_lock:
            if conn.usable and len(self._idle) < _IDLE_READERS:
                self._idle.append(conn)
                return
        conn.close()

    @staticmethod
    def begin_write(conn: PgConnection) -> None:
        conn.execute("BEGIN")

    @staticmethod
    def begin_snapshot(conn: PgConnection) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def stream(self, conn: PgConnection, sql: str, params: Sequence[Any]) -> Iterable[tuple[Any, ...]]:
        """Rows fetched 1000 at a time from a server-side cursor (needs an open transaction)."""
        cur = conn.raw.cursor(name=f"feedback_stream_{next(self._cursor_names)}")
        cur.itersize = 1000
        cur.execute(_pyformat(sql), tuple(params))
        return cur

    @staticmethod
    def retryable(exc: BaseException) -> bool:
        from psycopg import errors

        return isinstance(exc, (errors.DeadlockDetected, errors.SerializationFailure))

    @staticmethod
    def integrity_problems(conn: PgConnection) -> list[str]:
        """Foreign keys are enforced by the server; check that none was left unvalidated and no row is orphaned."""
        problems = [
            f"constraint {r[0]} is not validated"
            for r in conn.execute(
                "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                "WHERE n.nspname = current_schema() AND NOT c.convalidated"
            )
        ]
        for child, col, parent in (
            ("passages_shown", "interaction_id", "interactions"),
            ("candidates", "interaction_id", "interactions"),
            ("rankings", "interaction_id", "interactions"),
            ("corrections", "interaction_id", "interactions"),
            ("ratings", "candidate_id", "candidates"),
        ):
            n = conn.execute(
                f"SELECT COUNT(*) FROM {child} x LEFT JOIN {parent} p ON p.id = x.{col} WHERE p.id IS NULL"
            ).fetchone()[0]
            if n:
                problems.append(f"foreign key violation: {n} rows of {child} without their {parent} row")
        return problems

    def translate(self, exc: BaseException) -> FeedbackError:
        """Translate a psycopg failure into an error that says what happened and what to do."""
        import psycopg
        from psycopg import errors

        what = f"feedback database {self.location}"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, errors.LockNotAvailable):
            return FeedbackStoreUnavailable(
                f"the {what} stayed locked by another writer for more than {self.busy_timeout_s:g} s; "
                "nothing was recorded, retry later"
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return FeedbackStoreUnavailable(
                f"the {what} is read-only (a standby, or opened read_only); nothing was recorded"
            )
        if isinstance(exc, (errors.DiskFull, errors.OutOfMemory, errors.InsufficientResources)):
            return FeedbackStoreUnavailable(
                f"the {what} cannot grow: the server's disk is full ({first}); free space and retry. "
                "Nothing was recorded; what was stored before is intact"
            )
        if isinstance(exc, (errors.DeadlockDetected, errors.SerializationFailure)):
            return FeedbackStoreUnavailable(
                f"the {what} kept aborting the write because of concurrent writers ({first}); "
                "nothing was recorded, retry"
            )
        if isinstance(exc, psycopg.IntegrityError):
            return FeedbackValidationError(f"rejected by the {what}: {first}")
        if isinstance(exc, psycopg.DataError):
            return FeedbackValidationError(f"rejected by the {what}: {first}")
        if isinstance(exc, psycopg.OperationalError):
            return FeedbackStoreUnavailable(
                f"cannot reach the {what} ({first}); nothing was recorded, retry when the server is up"
            )
        if isinstance(exc, errors.InsufficientPrivilege):
            return FeedbackStoreUnavailable(f"the {what} refused the database user: {first}")
        return FeedbackStoreUnavailable(f"the {what} failed: {first}")
