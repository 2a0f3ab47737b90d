"""Everything the app writes in its home is private: the home 0700, its files 0600 (real `ragqa` processes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# What `ragqa serve` does first with the feedback store (the entry point, then the store opened in the home).
OPEN_STORE = (
    "import sys; from app.cli import main; main(['users', 'list']); "
    "from feedback_store.store import FeedbackStore; from settings.paths import ragqa_home; "
    "store = FeedbackStore.open(ragqa_home() / 'feedback.db'); store.stats(); store.close()"
)


def _ragqa(home: Path, *argv: str, stdin: str = "", code: str | None = None) -> None:
    env = {**os.environ, "RAGQA_HOME": str(home), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code] if code else [sys.executable, "-m", "app", *argv],
        input=stdin,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),  # a usual login umask: files would be world-readable
    )
    assert result.returncode == 0, result.stderr


def _modes(home: Path) -> dict[str, str]:
    out = {".": oct(stat.S_IMODE(home.stat().st_mode))}
    for path in home.rglob("*"):
        out[str(path.relative_to(home))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return out


def test_home_and_every_file_in_it_are_private(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.md").write_text("The Zorbium Tower opened on 14 March 1893.")
    _ragqa(home, "users", "add", "alice", "--role", "admin", "--password-stdin", stdin="alice-password\n")
    _ragqa(home, code=OPEN_STORE)
    _ragqa(home, "feedback", "stats")
    _ragqa(home, "ingest", str(docs))
    modes = _modes(home)
    assert {"users.json", "feedback.db", "index"} <= set(modes), modes
    assert any(name.startswith("index/") for name in modes)
    loose = {
        name: mode
        for name, mode in modes.items()
        if int(mode, 8) & 0o077 and not (home / name if name != "." else home).is_symlink()
    }
    assert not loose, f"readable by others: {loose}"
    assert modes["."] == "0o700" and modes["feedback.db"] == "0o600"


def test_an_existing_open_home_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "old-home"
    home.mkdir()
    os.chmod(home, 0o755)
    _ragqa(home, "users", "list")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
