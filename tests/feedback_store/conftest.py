"""Fixtures for the feedback store tests: a fresh store and the hand-built history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from feedback_history import History, build_history

from feedback_store.store import FeedbackStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    with FeedbackStore.open(tmp_path / "feedback.db") as s:
        yield s


@pytest.fixture
def history(store: FeedbackStore) -> History:
    return build_history(store)
