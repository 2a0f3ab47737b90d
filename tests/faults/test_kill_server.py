"""kill -9 of the app server while users write feedback: every acknowledged write survives, the store is intact.

The server is the real `python -m app serve` in a subprocess (benchmarks/load.py starts it). Four client threads
(gradio_client, each its own session) ask once, then write thumbs-up ratings with distinct reasons and, every
few writes, fresh alternatives + a ranking. Every ✅ the client receives is recorded with the id it names. The
server is SIGKILLed while the threads are still writing, restarted on the same RAGQA_HOME and port, and then
each acknowledged id must be in the store with what the client sent, and PRAGMA integrity_check must be ok.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from benchmarks.load import prepare_home, start_server
from feedback_store.store import FeedbackStore

RATED = re.compile(r"✅ 👍 saved \(#(\d+)\)")
RANKED = re.compile(r"✅ ranking saved \(#(\d+)\)")
WRITERS = 4
KILL_AFTER_ACKS = 40


class Acks:
    """What the clients were told was saved: rating id -> reason, ranking ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ratings: dict[int, str] = {}
        self.rankings: set[int] = set()
        self.failures: list[str] = []

    def count(self) -> int:
        with self.lock:
            return len(self.ratings) + len(self.rankings)


def _writer(url: str, n: int, acks: Acks, stop: threading.Event) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict("When did the Zorbium Tower open?", api_name="/ask")
    for i in range(2000):  # bounded; ends when the server dies (the calls raise) or stop is set
        if stop.is_set():
            return
        reason = f"writer {n} write {i}"
        try:
            if i % 5 == 4:
                client.predict(2, api_name="/alternatives")
                status = client.predict("A is better", "", api_name="/rank")
                if m := RANKED.search(str(status)):
                    with acks.lock:
                        acks.rankings.add(int(m.group(1)))
                continue
            status = client.predict(reason, api_name="/rate_up")
        except Exception as e:  # the server was killed: this write was not acknowledged
            with acks.lock:
                acks.failures.append(f"{type(e).__name__}: {e}"[:200])
            return
        if m := RATED.search(str(status)):
            with acks.lock:
                acks.ratings[int(m.group(1))] = reason


def test_kill9_during_feedback_writes_keeps_every_acknowledged_write(
    ragqa_home: Path, tiny_llama_dir: Path
) -> None:
    home = prepare_home(ragqa_home, tiny_llama_dir, config={"max_new_tokens": 8, "rate_limit_per_minute": 0})
    server = start_server(home)
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    acks, stop = Acks(), threading.Event()
    threads = [threading.Thread(target=_writer, args=(server.url, n, acks, stop)) for n in range(WRITERS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while acks.count() < KILL_AFTER_ACKS and time.monotonic() < deadline:
            time.sleep(0.02)
        writing = sum(t.is_alive() for t in threads)
        server.kill9()  # mid-stream: the writers are still sending
        assert writing == WRITERS, f"only {writing} writers were still writing at the kill"
        for t in threads:
            t.join(timeout=60)
    finally:
        stop.set()
        server.stop()
    assert acks.count() >= KILL_AFTER_ACKS and acks.rankings, (acks.count(), acks.failures)

    restarted = start_server(home, port)
    try:
        from gradio_client import Client

        # The restarted app serves and records again.
        client = Client(restarted.url, verbose=False)
        client.predict("When did the Zorbium Tower open?", api_name="/ask")
        assert RATED.search(client.predict("after the restart", api_name="/rate_up"))

        store = FeedbackStore.open(home / "feedback.db", read_only=True)
        try:
            records = list(store.iter_interactions())
            ratings = {r.id: r.reason for rec in records for r in rec.ratings}
            rankings = {r.id for rec in records for r in rec.rankings}
            missing = {i: reason for i, reason in acks.ratings.items() if ratings.get(i) != reason}
            assert not missing, f"acknowledged ratings lost or changed: {missing}"
            assert acks.rankings <= rankings, f"acknowledged rankings lost: {acks.rankings - rankings}"
            assert store.integrity_check() == "ok"
        finally:
            store.close()
    finally:
        restarted.stop()
    print(
        f"kill -9 after {len(acks.ratings)} ratings + {len(acks.rankings)} rankings acknowledged: all stored; "
        f"{len(ratings) - len(acks.ratings) - 1} stored but not acknowledged (in flight at the kill)"
    )
