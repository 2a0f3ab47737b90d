"""Group commit: concurrent writes share one transaction and one COMMIT, yet each fails alone and none is
acknowledged before its commit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from feedback_store.errors import FeedbackConflict, FeedbackStoreUnavailable, FeedbackValidationError
from feedback_store.store import FeedbackStore

CANDS = [{"text": "a", "model_version": "v1"}, {"text": "b", "model_version": "v1"}]


def _record_batches(store: FeedbackStore) -> list[int]:
    """Wrap the store's batch runner to record the size of every batch (= transactions committed)."""
    sizes: list[int] = []
    run = store._group._run_batch

    def counting(batch: list) -> None:
        sizes.append(len(batch))
        run(batch)

    store._group._run_batch = counting
    return sizes


def _in_threads(calls: dict[str, object], store: FeedbackStore) -> dict[str, object]:
    """Start every call while the writer connection is held, so all of them queue; then let them run."""
    out: dict[str, object] = {}

    def call(name: str, fn: object) -> None:
        try:
            out[name] = fn()  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out[name] = exc

    with store._lock:  # the first leader blocks in its batch; everyone else queues behind it
        threads = [threading.Thread(target=call, args=item) for item in calls.items()]
        threads[0].start()
        deadline = time.monotonic() + 10
        while not store._group._leading and time.monotonic() < deadline:
            time.sleep(0.001)
        for t in threads[1:]:
            t.start()
        while len(store._group._pending) < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(store._group._pending) == len(threads) - 1
    for t in threads:
        t.join(10)
    return out


def test_a_batch_commits_once_and_a_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    with FeedbackStore.open(tmp_path / "f.db") as store:
        first = store.record_interaction("Q0?", [], CANDS, session_id="s")
        store.record_rating(first.candidate_ids[0], True, session_id="s", client_token="tok")
        sizes = _record_batches(store)

        def half_done(conn: object) -> int:  # writes a row, then fails: its savepoint must undo the row
            conn.execute(  # type: ignore[attr-defined]
                "INSERT INTO interactions (question, context_json, session_id, created_at) "
                "VALUES ('half?', '[]', 's', 'now')"
            )
            raise ValueError("failed after writing")

        out = _in_threads(
            {
                "leader": lambda: store.record_interaction("Q1?", [], CANDS, session_id="s"),
                "ok": lambda: store.record_interaction("Q2?", [], CANDS, session_id="s"),
                "unknown": lambda: store.record_ranking(first.interaction_id, [[999], [1]], session_id="s"),
                "conflict": lambda: store.record_rating(
                    first.candidate_ids[1], False, session_id="s", client_token="tok"
                ),
                "replayed": lambda: store.record_rating(
                    first.candidate_ids[0], True, session_id="s", client_token="tok"
                ),
                "ranking": lambda: store.record_ranking(first.interaction_id, [[1], [2]], session_id="s"),
                "half": lambda: store._write("test", "s", None, [], half_done, int, int),
            },
            store,
        )
        assert sizes == [1, 6], "the six writes queued behind the first one commit together"
        assert isinstance(out["half"], ValueError)
        assert isinstance(out["unknown"], FeedbackValidationError) and "999" in str(out["unknown"])
        assert isinstance(out["conflict"], FeedbackConflict)
        assert out["replayed"] == 1  # the first rating's id, replayed from its token
        questions = [r.question for r in store.iter_interactions()]
        assert questions == ["Q0?", "Q1?", "Q2?"] or questions == ["Q0?", "Q2?", "Q1?"]
        (rec,) = [r for r in store.iter_interactions() if r.id == first.interaction_id]
        assert [list(map(list, r.order)) for r in rec.rankings] == [[[1], [2]]]
        assert [r.up for r in rec.ratings] == [True]
        assert store.integrity_check() == "ok"


def test_a_failed_transaction_acknowledges_none_of_its_writes(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "f.db"
    with FeedbackStore.open(db, busy_timeout_s=0.2) as store:
        store.record_interaction("Q0?", [], CANDS, session_id="s")
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
        out = _in_threads(
            {
                f"w{i}": (lambda i=i: store.record_interaction(f"Q{i}?", [], CANDS, session_id="s"))
                for i in range(4)
            },
            store,
        )
        other.execute("ROLLBACK")
        other.close()
        assert all(isinstance(v, FeedbackStoreUnavailable) for v in out.values()), out
        assert [r.question for r in store.iter_interactions()] == ["Q0?"]
        assert store.record_interaction("after", [], CANDS, session_id="s").interaction_id == 2


WRITER = textwrap.dedent(
    """
    import sys, threading
    from feedback_store.store import FeedbackStore
    store = FeedbackStore.open(sys.argv[1])
    lock = threading.Lock()
    def work(t):
        n = 0
        while True:
            ids = store.record_interaction(f"q{t}-{n}", [], [{"text": "a", "model_version": "v"}], session_id="s")
            with lock:
                print(ids.interaction_id, flush=True)
            n += 1
    for t in range(8):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_acknowledged_writes_survive_a_kill_mid_batch(store_target: str | Path) -> None:
    """8 writer threads, killed with SIGKILL: every id printed (acknowledged) is in the database after
    (SQLite file, or PostgreSQL: the server rolls back the killed client's open transaction)."""
    db = store_target
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env, cwd=root
    )
    acked: list[int] = []
    assert proc.stdout is not None
    while len(acked) < 300:
        line = proc.stdout.readline()
        assert line, "the writer died early"
        acked.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acked += [int(x) for x in proc.stdout.read().split()]
    with FeedbackStore.open(db) as store:
        stored = {r.id for r in store.iter_interactions()}
        assert set(acked) <= stored
        assert store.integrity_check() == "ok"
