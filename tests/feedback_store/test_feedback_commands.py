"""`ragqa feedback ...` handlers, through the ragqa command (its parser and its one error boundary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from feedback_store.store import FeedbackStore
from tests.feedback_store.feedback_history import build_history


def run(argv: list[str]) -> int:
    return main(argv)


@pytest.fixture
def db(ragqa_home: Path) -> Path:
    path = ragqa_home / "feedback.db"  # the default location: Paths.from_env().feedback_db
    with FeedbackStore.open(path) as s:
        build_history(s)
    return path


def test_stats_table_and_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["feedback", "stats"]) == 0
    out = capsys.readouterr().out
    assert "interactions" in out and "v0002" in out
    assert run(["feedback", "stats", "--json", "--db", str(db)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["interactions"], stats["pairs"]) == (3, 4)


def test_export_default_and_explicit_out(db: Path, ragqa_home: Path, tmp_path: Path, capsys) -> None:
    assert run(["feedback", "export", "--out", str(tmp_path / "x"), "--test-fraction", "0"]) == 0
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["files"]["preferences.train.jsonl"]["rows"] == 4
    assert run(["feedback", "export", "--test-fraction", "0"]) == 0
    snapshot_dir = ragqa_home / "exports" / manifest["snapshot_id"][:16]
    assert (snapshot_dir / "manifest.json").exists()
    assert run(["feedback", "export", "--test-fraction", "0"]) == 0  # the same snapshot again: no error
    assert sorted(p.name for p in (ragqa_home / "exports").iterdir()) == [snapshot_dir.name]
    assert "snapshot" in capsys.readouterr().out


def test_import_and_delete(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "q?", "chosen": "good", "rejected": "bad"}) + "\n")
    assert run(["feedback", "import", str(path)]) == 0
    assert "imported 1 items" in capsys.readouterr().out
    assert run(["feedback", "delete", "--session", "imported:prefs.jsonl"]) == 0
    assert "deleted 2 items" in capsys.readouterr().out  # the interaction and its ranking
    with FeedbackStore.open(db) as s:
        assert s.stats()["interactions"] == 3


def test_errors_are_one_line_without_traceback(db: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n[]\n")
    assert run(["feedback", "import", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: nothing was imported")
    assert "bad.jsonl:1: not valid JSON" in err and "bad.jsonl:2: expected a JSON object" in err
    assert run(["feedback", "stats", "--db", str(tmp_path / "none.db")]) == 1
    assert "no feedback database" in capsys.readouterr().err
    assert run(["feedback", "stats", "--db", "postgresql://nosuchhost.invalid/y"]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "cannot reach the feedback database postgresql://@nosuchhost.invalid/y" in err
    )
    assert run(["feedback", "stats", "--db", "mysql://x/y"]) == 1
    assert "unsupported feedback store DSN" in capsys.readouterr().err
    assert run(["feedback"]) == 1  # no subcommand: usage on stderr
    assert "stats" in capsys.readouterr().err
