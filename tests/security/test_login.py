"""Logins cannot be hammered: password checks run off the event loop, failures back off, names do not leak by timing.

A real server with logins (app.ui.launch) and real HTTP clients.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app.access import LoginThrottle
from app.auth import Users
from app.services import Services
from app.ui import launch
from tests.security.conftest import ALICE, login

HAMMER_S = 20.0


def _hammer(url: str, name_of: callable, stop: threading.Event, log: list[tuple[float, int]]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        i = 0
        while not stop.is_set():
            response = client.post("login", data={"username": name_of(i), "password": f"guess-{i}-xyz"})
            log.append((time.monotonic(), response.status_code))
            if (
                response.status_code == 429
            ):  # a polite client would wait Retry-After; an attacker retries soon
                time.sleep(0.05)
            i += 1


def test_login_hammering_neither_blocks_others_nor_goes_unthrottled(
    served_with_auth: tuple[Services, str],
) -> None:
    _services, url = served_with_auth
    reader = login(url, *ALICE)  # logged in before the attack (the attack then blocks this address's logins)
    stop = threading.Event()
    logs: list[list[tuple[float, int]]] = [[] for _ in range(4)]
    names = [lambda i: "alice", lambda i: "bob", lambda i: f"nobody{i}", lambda i: f"ghost{i}"]
    start = time.monotonic()
    threads = [
        threading.Thread(target=_hammer, args=(url, names[n], stop, logs[n]), daemon=True) for n in range(4)
    ]
    for t in threads:
        t.start()
    latencies = []
    while time.monotonic() - start < HAMMER_S:
        t0 = time.perf_counter()
        assert reader.get("gradio_api/login_check").status_code == 200
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    answers = sorted(entry for log in logs for entry in log)
    checked = [t - start for t, status in answers if status == 400]  # a password was actually checked
    throttled = sum(1 for _, status in answers if status == 429)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    first = sum(1 for t in checked if t < 5) / 5
    last = sum(1 for t in checked if t >= 10) / (HAMMER_S - 10)
    print(
        f"trivial request p95 {p95 * 1000:.1f} ms (median {statistics.median(latencies) * 1000:.1f} ms, "
        f"n={len(latencies)}); wrong guesses checked/s: first 5 s {first:.2f}, last 10 s {last:.2f}; "
        f"{throttled} answered 429"
    )
    assert p95 < 0.100, f"a trivial request's p95 was {p95 * 1000:.0f} ms while logins were hammered"
    assert throttled > 0 and all(status in (400, 429) for _, status in answers)
    assert last < first / 3, f"no backoff: {first:.2f} guesses/s at first, {last:.2f} later"


@pytest.fixture
def served_unthrottled(tiny_services: Services, users: Users) -> Iterator[str]:
    # Timing only: the backoff would otherwise answer most of these guesses with 429 before any hashing.
    throttle = LoginThrottle(free_per_name=10**6, free_per_address=10**6)
    demo, url = launch(tiny_services, prevent_thread_lock=True, users=users, throttle=throttle)
    try:
        yield url
    finally:
        demo.close()


def test_unknown_names_cost_the_same_pbkdf2_as_known_ones(users: Users, monkeypatch) -> None:
    """The deterministic half of the timing guarantee: an unknown name runs one PBKDF2 of the same cost."""
    import hashlib

    calls: list[int] = []
    real = hashlib.pbkdf2_hmac

    def counting(name: str, password: bytes, salt: bytes, iterations: int, *args: object) -> bytes:
        calls.append(iterations)
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counting)
    assert not users.check("alice", "wrong-password")
    known = list(calls)
    calls.clear()
    assert not users.check("nobody-here", "wrong-password")
    assert calls == known and len(known) == 1, (calls, known)


def test_unknown_names_take_as_long_as_wrong_passwords(served_unthrottled: str) -> None:
    # Pairs measured back to back, each order half the time: a load change on the shared cores hits both of a pair.
    # The median of the paired differences is compared, not the difference of two medians (which a burst of load
    # during one half of the run shifts by 10% on a 2-core machine).
    unknown, known, diffs = [], [], []
    with httpx.Client(base_url=served_unthrottled, timeout=60) as client:
        client.post("login", data={"username": "warm-up", "password": "x" * 12})
        for i in range(40):
            times = {}
            pair = [f"nobody{i}", "alice"]
            for name in pair if i % 2 else pair[::-1]:
                t0 = time.perf_counter()
                assert (
                    client.post("login", data={"username": name, "password": f"wrong-{i}"}).status_code == 400
                )
                times[name] = time.perf_counter() - t0
            unknown.append(times[f"nobody{i}"])
            known.append(times["alice"])
            diffs.append(times[f"nobody{i}"] - times["alice"])
    a, b, d = statistics.median(unknown), statistics.median(known), statistics.median(diffs)
    print(
        f"median wrong login: unknown name {a * 1000:.1f} ms, known {b * 1000:.1f} ms, paired diff {d * 1000:+.1f} ms"
    )
    assert abs(d) / b < 0.10, (
        f"unknown names take {d * 1000:+.0f} ms more than known ({b * 1000:.0f} ms): enumerable"
    )


def test_backoff_is_exponential_bounded_per_name_and_address() -> None:
    now = [0.0]
    throttle = LoginThrottle(free_per_name=2, free_per_address=3, base_s=1, max_s=8, clock=lambda: now[0])
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    assert throttle.wait_s("alice", "10.0.0.1") == 0  # typos are free
    waits = []
    for _ in range(6):
        throttle.failed("alice", "10.0.0.2")
        waits.append(throttle.wait_s("alice", "10.0.0.9"))  # per name, whatever the address
    assert waits == [1, 2, 4, 8, 8, 8]
    assert throttle.wait_s("bob", "10.0.0.1") == 0
    for i in range(4):
        throttle.failed(f"name{i}", "10.0.0.3")
    assert throttle.wait_s("carol", "10.0.0.3") == 1  # per address, whatever the name
    throttle.succeeded("alice")
    assert throttle.wait_s("alice", "10.0.0.9") == 0
    now[0] += 901
    assert throttle.wait_s("carol", "10.0.0.3") == 0
