"""The feedback store's commit engine: group commit and the batch transaction (one COMMIT for many writes).

`GroupCommit` queues concurrent writes and lets one writer (the leader) run them as one batch; `run_batch` runs a
batch in ONE transaction, each write in its own SAVEPOINT, and retries a batch that lost a deadlock. The store
(store.py) owns the connection and the SQL of each write; this module owns when and how they commit.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from feedback_store.errors import FeedbackError

T = TypeVar("T")

BATCH_ATTEMPTS = 3  # a batch rolled back by a deadlock / serialization failure is run again this often


class Request:
    """One write waiting for the group commit: its work, then its result or its error."""

    __slots__ = ("run", "result", "error", "done")

    def __init__(self, run: Callable[[Any], Any]) -> None:
        self.run = run
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False

    def fail(self, exc: BaseException) -> None:
        self.error, self.result = exc, None


class GroupCommit:
    """Group commit: concurrent writers share one transaction and one fsync instead of one each.

    A writer enqueues its request. If no batch is running, it becomes the leader: it takes every request queued
    so far (its own included, up to `max_batch`), runs them with `run_batch` (one transaction, one COMMIT), then
    marks them done and wakes their writers. Writers that arrived while a batch was running wait; when it ends,
    one of those still pending leads the next batch with all of them. Every write is acknowledged (its call
    returns) only after the COMMIT holding it has returned, so durability is that of one commit (FULL: fsynced).
    One writer alone gets batches of one: no gain, and no loss beyond a savepoint.
    """

    def __init__(self, run_batch: Callable[[list[Request]], None], max_batch: int = 256) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[Request] = []
        self._leading = False

    def submit(self, run: Callable[[Any], T]) -> T:
        """Queue `run` and return its result once committed (or raise its error); thread-safe."""
        req = Request(run)
        with self._cond:
            self._pending.append(req)
        while True:
            with self._cond:
                while self._leading and not req.done:
                    self._cond.wait()
                if req.done:
                    break
                self._leading = True  # FIFO: leading until our own request has been in a batch
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            self._lead(batch)
        if req.error is not None:
            raise req.error
        return req.result

    def _lead(self, batch: list[Request]) -> None:
        try:
            self._run_batch(batch)
        except BaseException as exc:  # run_batch reports per request; this is a last resort
            for r in batch:
                if r.error is None:
                    r.fail(exc)
            raise
        finally:
            with self._cond:
                for r in batch:
                    r.done = True
                self._leading = False
                self._cond.notify_all()


class RetryBatch(Exception):
    """A write hit a deadlock / serialization failure: the whole batch must be rolled back and run again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def fail_closed(batch: list[Request]) -> None:
    """The store was closed before the batch ran: nothing was written."""
    for req in batch:
        req.fail(FeedbackError("the feedback store is closed"))


def run_batch(backend: Any, conn: Any, batch: list[Request]) -> Any:
    """Run a batch of writes in ONE transaction and one COMMIT (one fsync / one WAL flush); -> the writer to keep.

    Each write runs inside its own SAVEPOINT, so a write that fails (bad input, a conflict) is rolled back
    alone and gets its own error while the others commit. An error that ends the whole transaction (a full
    disk, a lock held too long, a failed COMMIT, a dropped connection) fails every write of the batch: none
    is acknowledged. A deadlock or serialization failure between processes (PostgreSQL) rolls the batch
    back and runs it again, up to BATCH_ATTEMPTS times. The caller holds the lock guarding `conn`; the
    connection returned replaces it (a writer found dead at BEGIN is reopened).
    """
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(random.uniform(0.0, 0.02 * attempt))  # let the other transaction finish
        for req in batch:
            req.result, req.error = None, None
        try:
            conn = _begin(backend, conn)
            for req in batch:
                _run_in_savepoint(backend, conn, req)
                if not conn.in_transaction:  # SQLite rolled back everything (e.g. SQLITE_FULL)
                    raise req.error  # type: ignore[misc]
            conn.execute("COMMIT")
            return conn
        except RetryBatch as retry:
            _rollback(backend, conn)
            if attempt == BATCH_ATTEMPTS:
                _fail_all(batch, backend.translate(retry.cause))
        except backend.errors as exc:
            _rollback(backend, conn)
            if attempt == BATCH_ATTEMPTS or not backend.retryable(exc):
                _fail_all(batch, backend.translate(exc))
                return conn
        except BaseException as exc:
            _rollback(backend, conn)
            _fail_all(batch, exc)
            return conn
    return conn


def _begin(backend: Any, conn: Any) -> Any:
    """Start the write transaction on a live writer. A connection that turns out dead at BEGIN (the
    PostgreSQL server restarted while the app was idle) is replaced once: nothing was sent yet."""
    conn = backend.alive(conn)
    try:
        backend.begin_write(conn)
    except backend.errors:
        if getattr(conn, "usable", True):
            raise
        conn = backend.alive(conn)
        backend.begin_write(conn)
    return conn


def _run_in_savepoint(backend: Any, conn: Any, req: Request) -> None:
    conn.execute("SAVEPOINT write")
    try:
        req.result = req.run(conn)
        conn.execute("RELEASE write")
    except BaseException as exc:
        if backend.retryable(exc):
            raise RetryBatch(exc) from exc
        is_db = isinstance(exc, backend.errors)
        req.error = backend.translate(exc) if is_db else exc
        if conn.in_transaction:
            conn.execute("ROLLBACK TO write")
            conn.execute("RELEASE write")


def _fail_all(batch: list[Request], exc: BaseException) -> None:
    """Nothing of the batch was committed: every write reports the failure (its own error if it had one)."""
    for req in batch:
        if req.error is None:
            req.error = exc
        req.result = None


def _rollback(backend: Any, conn: Any) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except backend.errors:
        # SQLite may already have rolled back (e.g. after SQLITE_FULL); a dropped PostgreSQL connection
        # rolled back on the server: nothing left to undo, `alive` replaces it before the next batch.
        pass
