"""Fixtures for the fault tests: a feedback store filled with hand-made feedback, subprocess helpers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.training.conftest import FACTS, tiny_model_dir  # noqa: F401  (fixture: toy-tokenizer Llama)

ROOT = Path(__file__).resolve().parents[2]
PAUSE_AT = Path(__file__).with_name("pause_at.py")


def fill_store(db: Path, n: int = 12) -> None:
    """n questions, each with a good and a bad candidate, a ranking (good first) and a written correction."""
    from feedback_store.store import FeedbackStore

    store = FeedbackStore.open(db)
    try:
        for i in range(n):
            question, passage, answer = FACTS[i % len(FACTS)]
            question = question if i < len(FACTS) else f"{question} (again {i})"
            cand = {"model_version": "v0001", "sampling": {"do_sample": True, "temperature": 0.8}}
            ids = store.record_interaction(
                question,
                [{"rank": 1, "chunk_id": f"facts:{i}", "source": "facts.md", "text": passage, "score": 1.0}],
                [
                    {**cand, "text": f"{answer} [1]", "label": "A"},
                    {**cand, "text": "I do not know.", "label": "B"},
                ],
                session_id="simulated:faults",
            )
            good, bad = ids.candidate_ids
            store.record_ranking(ids.interaction_id, [[good], [bad]], session_id="simulated:faults")
            store.record_correction(
                ids.interaction_id, f"{passage} [1]", replaces=[bad], session_id="simulated:faults"
            )
    finally:
        store.close()


def subprocess_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RAGQA_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run_until_paused(home: Path, point: str, argv: list[str], timeout_s: float = 300.0) -> str:
    """Run `ragqa ARGV` under tests/faults/pause_at.py; when it freezes at `point`, kill -9 it.

    Returns what the process printed. Fails if it ended before reaching the point.
    """
    marker = home / f".paused-{point}"
    marker.unlink(missing_ok=True)
    log = home / f"retrain-{point}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(PAUSE_AT), point, str(marker), *argv],
            cwd=ROOT,
            env=subprocess_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout_s
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"ragqa exited ({proc.returncode}) before {point}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{point} not reached in {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.05)
        _wait_stopped(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return log.read_text()


def _wait_stopped(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until the process is frozen by its SIGSTOP (state T), so the kill lands exactly there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop at the pause point")


def ragqa(home: Path, *argv: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """The real `ragqa` command (python -m app) in a subprocess, on `home`."""
    return subprocess.run(
        [sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        env=subprocess_env(home),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
