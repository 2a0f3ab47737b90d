"""Per-user rate limiting: a token bucket per user (or browser session when no one is logged in)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from app.errors import AppError


class RateLimited(AppError, RuntimeError):
    """Too many requests; the message says when to retry."""


class RateLimiter:
    """Allow `per_minute` requests per key on average, with bursts up to `burst`."""

    def __init__(
        self, per_minute: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, int(per_minute)))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for `key` or raise RateLimited."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1:
                wait = (1 - tokens) / self.rate
                self._buckets[key] = (tokens, now)
                raise RateLimited(f"too many questions: try again in {wait:.0f} s")
            self._buckets[key] = (tokens - 1, now)
