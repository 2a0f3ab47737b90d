"""Wiring: one object holding the QA service and the feedback store for a running app (no module globals)."""

from __future__ import annotations

import threading
from typing import Any

from app.config import AppConfig
from app.qa import QAService


class Services:
    def __init__(self, config: AppConfig, *, embedder: Any = None) -> None:
        self.config = config
        self.qa = QAService(config, embedder=embedder)
        self._store: Any = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Any:
        """The feedback store, opened (and migrated) on first use."""
        with self._lock:
            if self._store is None:
                from feedback_store.store import FeedbackStore, feedback_target

                # $RAGQA_FEEDBACK_DSN, else `feedback_dsn` in config.yaml, else the SQLite file in RAGQA_HOME.
                default = self.config.feedback_dsn or self.config.paths.feedback_db
                self._store = FeedbackStore.open(feedback_target(default))
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
