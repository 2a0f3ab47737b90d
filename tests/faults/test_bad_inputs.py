"""Bad inputs through the HTTP API, the `ragqa` CLI and the ingest API: each gets a clear, expected error.

A case "crashes" when it raises out of the API/CLI (an uncaught exception, a Gradio AppError, a traceback on
stderr, an exit code that is neither 0 nor 1) or when its message does not say what was wrong. The test prints
"bad inputs tried: N, crashes: 0" and fails listing every crash.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.config import AppConfig
from app.services import Services
from app.ui import launch
from benchmarks.load import DOCS, free_port
from model_store.registry import ModelRegistry
from retrieval.embedder import HashEmbedder
from retrieval.ingest import ingest
from tests.faults.conftest import ROOT, subprocess_env

QUESTION = "When did the Zorbium Tower open?"


class Cases:
    """Runs bad-input cases; records the ones that crash."""

    def __init__(self) -> None:
        self.tried = 0
        self.crashes: list[str] = []

    def check(self, name: str, run: Callable[[], str], expect: str) -> None:
        """`run` returns the message the user sees; it must match `expect` (a regex, case-insensitive).

        Gradio's own input validation (a slider value out of range, a radio value not among the choices) answers
        with an AppError naming the bad value before any handler runs: that is a clear refusal, not a crash.
        """
        from gradio_client.exceptions import AppError

        self.tried += 1
        try:
            message = run()
        except AppError as e:
            message = f"refused by Gradio's input validation: {e}"
            if not re.search(
                r"Value\b.* (greater than maximum|less than minimum|not in the list of choices)", str(e)
            ):
                self.crashes.append(f"{name}: AppError from a handler: {str(e)[:300]}")
                return
        except Exception as e:  # a crash: the API/CLI let an exception out
            self.crashes.append(f"{name}: raised {type(e).__name__}: {str(e)[:300]}")
            return
        if "Traceback" in message or not re.search(expect, message, re.IGNORECASE | re.DOTALL):
            self.crashes.append(f"{name}: expected /{expect}/, got {message[:400]!r}")


@pytest.fixture
def served(ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path) -> Iterator[tuple[Services, object, str]]:
    from gradio_client import Client

    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    cfg = AppConfig.load(max_new_tokens=8, rate_limit_per_minute=0, port=free_port(), host="127.0.0.1")
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text, encoding="utf-8")
    ingest(docs, cfg.paths.index_dir, HashEmbedder(), progress=False)
    services = Services(cfg, embedder=HashEmbedder())
    demo, url = launch(services, prevent_thread_lock=True)
    try:
        yield services, Client(url, verbose=False), url
    finally:
        demo.close()
        services.close()


def raw_ask(url: str, question_json: str, quote: bool = True) -> str:
    """POST /ask with hand-written JSON (gradio_client cannot send a lone surrogate); the status or HTTP code."""
    import httpx

    body = '{"data": [' + (f'"{question_json}"' if quote else question_json) + "]}"
    posted = httpx.post(
        f"{url}gradio_api/call/ask", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    if posted.status_code >= 400:
        return f"HTTP {posted.status_code}: {posted.text[:200]}"
    event_id = posted.json()["event_id"]
    stream = httpx.get(f"{url}gradio_api/call/ask/{event_id}", timeout=120).text
    if "event: error" in stream:
        return f"error: {stream[-300:]}"
    import json

    last = [line for line in stream.splitlines() if line.startswith("data:")][-1]
    return str(json.loads(last[5:])[3])


def _api_cases(cases: Cases, client: object, url: str) -> None:
    def ask(q: str) -> str:
        return client.predict(q, api_name="/ask")[3]

    def alternatives(n: object) -> str:
        return client.predict(n, api_name="/alternatives")[-1]

    def rank(choice: str | None, order: str) -> str:
        return client.predict(choice, order, api_name="/rank")

    err = r"^⚠️ "
    cases.check("rank before any question", lambda: rank("A is better", ""), err + "ask a question first")
    cases.check("correction before any question", lambda: client.predict("x", api_name="/correct"), err)
    cases.check("empty question", lambda: ask(""), err + "the question is empty")
    cases.check("whitespace question", lambda: ask(" \n\t  "), err + "the question is empty")
    cases.check(
        "1 MB question",
        lambda: ask("why? " * 200_000),
        err + r"the question is too long \(999999 characters\); please shorten it to at most 2000 characters",
    )
    cases.check("NUL in question", lambda: ask("When\x00 did the tower open?"), r"^(Answered in|⚠️ )")
    cases.check(
        "question that is not a string",
        lambda: raw_ask(url, "12345", quote=False),
        r"^(HTTP 4\d\d|Answered in|⚠️ )",
    )
    assert "Answered in" in ask(QUESTION)
    cases.check("7 alternatives", lambda: alternatives(7), "maximum value 4")
    cases.check("-1 alternatives", lambda: alternatives(-1), "minimum value 2")
    assert alternatives(2).startswith("2 alternatives")
    cases.check("unknown two-way choice", lambda: rank("C is better", ""), "not in the list of choices")
    cases.check("no two-way choice", lambda: rank(None, ""), err)
    assert alternatives(3).startswith("3 alternatives")
    cases.check("unknown candidate in order", lambda: rank(None, "A > B > Z"), err + r"unknown candidate.*Z")
    cases.check("repeated candidate in order", lambda: rank(None, "A > A > B"), err)
    cases.check("empty order", lambda: rank(None, "  "), err + "enter an order")
    cases.check("order with an empty place", lambda: rank(None, "A > > B"), err + "empty place")
    cases.check(
        "empty correction",
        lambda: client.predict("", api_name="/correct"),
        err + "write your answer in the box first",
    )
    cases.check("whitespace correction", lambda: client.predict("  \n ", api_name="/correct"), err)
    cases.check("1 MB rating reason", lambda: client.predict("x" * 1_000_000, api_name="/rate_down"), err)
    cases.check("rollback to a missing version", lambda: client.predict("v9999", api_name="/rollback"), err)
    cases.check("rollback to a path", lambda: client.predict("../../etc", api_name="/rollback"), err)


def _store_cases(cases: Cases, services: Services) -> None:
    from feedback_store.errors import FeedbackError

    store = services.store
    (rec,) = [r for r in store.iter_interactions() if r.question == QUESTION]

    def expected(call: Callable[[], object]) -> Callable[[], str]:
        def run() -> str:
            try:
                call()
            except FeedbackError as e:  # the store's own error classes are the expected outcome
                return f"{type(e).__name__}: {e}"
            return "accepted"

        return run

    sid = "web:bad-inputs"
    cases.check(
        "ranking with unknown candidate ids",
        expected(lambda: store.record_ranking(rec.id, [[10_001], [10_002]], session_id=sid)),
        r"FeedbackValidationError: candidates \[10001, 10002\] are not answers",
    )
    cases.check(
        "ranking of an unknown interaction",
        expected(lambda: store.record_ranking(99_999, [[1]], session_id=sid)),
        "FeedbackNotFound",
    )
    cases.check("empty ranking", expected(lambda: store.record_ranking(rec.id, [], session_id=sid)), "empty")
    cases.check(
        "empty correction (store)",
        expected(lambda: store.record_correction(rec.id, "", session_id=sid)),
        "FeedbackValidationError",
    )


def _bad_files(root: Path) -> dict[str, Path]:
    """Files no one should have to ingest. None costs disk: the 200 MB file is sparse."""
    root.mkdir(parents=True)
    files = {
        "binary file": root / "blob.bin",
        "binary with a text name": root / "blob.txt",
        "invalid UTF-8": root / "latin.txt",
        "empty file": root / "empty.md",
        "200 MB sparse file": root / "huge.txt",
        "broken PDF": root / "broken.pdf",
        "symlink loop": root / "loop-a.txt",
        "directory symlink loop": root / "sub" / "again",
    }
    payload = bytes(range(256)) * 64
    files["binary file"].write_bytes(payload)
    files["binary with a text name"].write_bytes(payload)
    files["invalid UTF-8"].write_bytes(b"caf\xe9 cr\xe8me \xff\xfe broken \x80 bytes, the Zorbium Tower\n")
    files["empty file"].write_bytes(b"")
    with open(files["200 MB sparse file"], "wb") as fh:
        fh.truncate(200 * 1024 * 1024)
    files["broken PDF"].write_bytes(
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nendobj\ngarbage\xff\x00"
    )
    os.symlink(root / "loop-b.txt", files["symlink loop"])
    os.symlink(files["symlink loop"], root / "loop-b.txt")
    files["directory symlink loop"].parent.mkdir()
    os.symlink(root, files["directory symlink loop"])
    return files


def _ingest_cases(cases: Cases, tmp_path: Path) -> None:
    from retrieval.errors import RetrievalError

    files = _bad_files(tmp_path / "bad")
    expected = {  # each file is skipped with its reason (a symlink loop given directly is an IngestError)
        "binary file": r"1 skipped.*blob\.bin: unsupported type \(\.bin\)",
        "binary with a text name": r"1 skipped.*blob\.txt: binary file",
        "invalid UTF-8": r"1 skipped.*latin\.txt: not valid UTF-8 \(byte 3\); re-save the file as UTF-8",
        "empty file": r"1 skipped.*empty\.md: empty file",
        "200 MB sparse file": r"1 skipped.*huge\.txt: too large \(200\.0 MB > limit 50\.0 MB\)",
        "broken PDF": r"1 skipped.*broken\.pdf: PDF could not be parsed",
        "symlink loop": r"IngestError: .*loop-a\.txt does not exist",
        "directory symlink loop": r"sub/again: symlink loop \(points to a folder above it\)",
    }
    for name, path in files.items():

        def run(path: Path = path) -> str:
            index = tmp_path / f"index-{path.name}"
            try:
                report = ingest(path, index, HashEmbedder(), progress=False, max_file_bytes=50 * 1024 * 1024)
            except RetrievalError as e:  # the ingest's own error classes are the expected outcome
                return f"{type(e).__name__}: {e}"
            return report.summary()

        cases.check(f"ingest API: {name}", run, expected[name])
    # The real CLI on the whole folder (the real embedder), in a subprocess: exit 0 or 1, one clear summary.
    # A fresh home: the app's index was built by the hash embedder, which the CLI would rightly refuse.
    env = subprocess_env(tmp_path / "cli-home")

    def cli() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "app", "ingest", str(tmp_path / "bad")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode not in (0, 1):
            return f"exit {done.returncode}: {done.stderr}"
        return done.stdout + done.stderr

    cases.check("ragqa ingest of the folder of bad files", cli, r"9 files seen: 0 new.* 9 skipped; 0 chunks")


def _cli_cases(cases: Cases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    from app.cli import main

    def cli(*argv: str, stdin: str = "") -> Callable[[], str]:
        def run() -> str:
            out, err = io.StringIO(), io.StringIO()
            with monkeypatch.context() as patch:  # undoes only these three (RAGQA_HOME stays set)
                patch.setattr(sys, "stdin", io.StringIO(stdin))
                patch.setattr(sys, "stdout", out)
                patch.setattr(sys, "stderr", err)
                try:
                    code = main(list(argv))
                except SystemExit as e:  # argparse usage errors exit 2 with a usage line: expected
                    code = e.code
            return f"exit {code}: {out.getvalue()}{err.getvalue()}"

        return run

    cases.check("ask an empty question", cli("ask", ""), r"exit 1: .*error: the question is empty")
    cases.check("ask a huge question", cli("ask", "x" * 100_000), r"exit 1: .*question is too long")
    cases.check(
        "user name with spaces",
        cli("users", "add", "bad name!", "--password-stdin", stdin="long-password\n"),
        r"exit 1: .*user name",
    )
    cases.check(
        "short password",
        cli("users", "add", "carol", "--password-stdin", stdin="short\n"),
        r"exit 1: .*at least 8",
    )
    cases.check(
        "resume an unknown run", cli("retrain", "--resume", "no-such-run"), r"exit 1: .*no run 'no-such-run'"
    )
    cases.check(
        "missing retrain config",
        cli("retrain", "--config", str(tmp_path / "nope.yaml")),
        r"exit 1: .*nope\.yaml",
    )
    cases.check(
        "rollback to a missing version", cli("models", "rollback", "v0099"), r"exit 1: .*no model version"
    )
    cases.check(
        "import a missing file",
        cli("feedback", "import", str(tmp_path / "none.jsonl")),
        r"exit 1: .*none\.jsonl",
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b'{"prompt": [\n\xff\xfe not json\n')
    cases.check("import a broken JSONL", cli("feedback", "import", str(broken)), r"exit 1: .*(line|json)")
    cases.check("unknown subcommand", cli("frobnicate"), r"exit 2")
    (home / "config.yaml").write_text("max_new_tokens: [unclosed\n")
    cases.check("config.yaml that is not YAML", cli("ask", "q?"), r"exit 1: .*config\.yaml is not valid YAML")
    (home / "config.yaml").write_text("max_new_tokenz: 5\n")
    cases.check("config.yaml with a typo", cli("ask", "q?"), r"exit 1: .*unknown config key.*max_new_tokenz")
    (home / "config.yaml").unlink()
    (home / "users.json").write_text('{"alice": ')
    cases.check("corrupt users file", cli("users", "list"), r"exit 1: .*users\.json is not valid JSON")
    (home / "users.json").unlink()


def test_bad_inputs_give_clear_errors_and_never_crash(
    served: tuple[Services, object, str], tmp_path: Path, ragqa_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client, url = served
    cases = Cases()
    _api_cases(cases, client, url)
    _store_cases(cases, services)
    _ingest_cases(cases, tmp_path)
    _cli_cases(cases, tmp_path, monkeypatch, ragqa_home)
    assert services.store.integrity_check() == "ok"
    print(f"bad inputs tried: {cases.tried}, crashes: {len(cases.crashes)}")
    assert not cases.crashes, "\n".join(cases.crashes)


def test_question_with_a_lone_surrogate_is_refused_clearly(served: tuple[Services, object, str]) -> None:
    _services, _client, url = served
    status = raw_ask(url, "When did the Zorbium Tower open? \\ud800")
    assert re.match(r"^(HTTP 4\d\d|⚠️ )", status), status
