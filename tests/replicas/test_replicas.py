"""Two `ragqa serve` processes (two ports) share one RAGQA_HOME registry and one PostgreSQL feedback store.

Driven over HTTP with gradio_client like two browser sessions at once: ask, alternatives, rank on each replica;
every acknowledged ranking is in the shared store. Then a new registry version is published and both replicas
answer with it on their next request (the model label and the `model_version` of the stored candidates).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import AppConfig
from feedback_store.store import FeedbackStore
from model_store.registry import ModelRegistry
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]
DOCS = {
    "kelvale/tower.md": "The Zorbium Tower in Kelvale opened on 14 March 1893. It is 212 metres tall.",
    "ships/marigold.md": "The research ship Marigold Vance carries a crew of 31. Its home port is Orrin Bay.",
}
QUESTIONS = [
    "When did the Zorbium Tower open?",
    "How tall is the Zorbium Tower?",
    "Where is the Marigold's home port?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"replica exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"replica at {url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def replicas(
    ragqa_home: Path, tiny_llama_dir: Path, replica_pg_server: str, tmp_path: Path
) -> Iterator[tuple[str, list[str]]]:
    """(feedback DSN, [url of replica 1, url of replica 2]) with v0001 = the tiny Llama published."""
    import psycopg

    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    (ragqa_home / "config.yaml").write_text("max_new_tokens: 8\n")  # read by both `ragqa serve` processes
    cfg = AppConfig.load()
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text, encoding="utf-8")
    ingest(docs, cfg.paths.index_dir, SentenceTransformerEmbedder(cfg.embedder), progress=False)

    name = f"replicas_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(replica_pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = replica_pg_server.replace("/postgres?", f"/{name}?", 1)
    assert name in dsn
    env = {**os.environ, "RAGQA_HOME": str(ragqa_home), "RAGQA_FEEDBACK_DSN": dsn, "PYTHONPATH": str(ROOT)}
    procs, urls, logs = [], [], []
    try:
        for i in range(2):
            port = _free_port()
            log = tmp_path / f"replica{i}.log"
            with log.open("w") as fh:
                procs.append(
                    subprocess.Popen(
                        # `ragqa serve`, run as `python -m app` so the test needs no console script on PATH
                        [sys.executable, "-m", "app", "serve", "--port", str(port)],
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=ROOT,
                        start_new_session=True,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}/")
            logs.append(log)
        for proc, url, log in zip(procs, urls, logs, strict=True):
            _wait_ready(proc, url, log)
        yield dsn, urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _session(url: str, questions: list[str], out: dict[str, object]) -> None:
    """One browser session on one replica: ask, 2 alternatives, rank A over B, for each question."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        acks, labels = [], []
        for q in questions:
            _chat, _sources, model, status, _box = client.predict(q, api_name="/ask")
            assert "Answered in" in status, status
            labels.append(model)
            *_boxes, status = client.predict(2, api_name="/alternatives")
            assert status.startswith("2 alternatives"), status
            acks.append("ranking saved" in client.predict("A is better", "", api_name="/rank"))
        out[url] = (acks, labels)
    except BaseException as exc:  # noqa: BLE001 - reported by the test thread
        out[url] = exc


def _drive_both(urls: list[str], questions: list[str]) -> dict[str, tuple[list[bool], list[str]]]:
    out: dict[str, object] = {}
    threads = [threading.Thread(target=_session, args=(url, questions, out)) for url in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for url in urls:
        if isinstance(out.get(url), BaseException):
            raise out[url]  # type: ignore[misc]
    return out  # type: ignore[return-value]


def test_two_replicas_share_the_store_and_follow_the_registry(
    replicas: tuple[str, list[str]], ragqa_home: Path, tiny_llama_dir: Path
) -> None:
    dsn, urls = replicas
    first = _drive_both(urls, QUESTIONS[:2])
    for acks, labels in first.values():
        assert acks == [True, True]
        assert all("v0001" in label for label in labels), labels
    with FeedbackStore.open(dsn) as store:
        recs = list(store.iter_interactions())
        # 2 replicas x 2 questions, one session per replica, every acknowledged ranking stored once
        assert len(recs) == 4 and len({r.session_id for r in recs}) == 2
        assert sum(len(r.rankings) for r in recs) == 4
        assert {c.model_version for r in recs for c in r.candidates} == {"v0001"}
        assert all(len(r.candidates) == 3 for r in recs)  # the answer and two alternatives
        assert store.integrity_check() == "ok"

    v2 = ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "rlhf"})
    assert v2.name == "v0002"
    second = _drive_both(urls, QUESTIONS[2:])
    for acks, labels in second.values():
        assert acks == [True] and "v0002" in labels[0], labels
    with FeedbackStore.open(dsn) as store:
        new = [r for r in store.iter_interactions() if r.question == QUESTIONS[2]]
        assert len(new) == 2 and {c.model_version for r in new for c in r.candidates} == {"v0002"}
        assert store.stats()["rankings"] == 6
