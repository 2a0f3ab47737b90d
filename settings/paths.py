"""Where state lives: everything under RAGQA_HOME (default ./var), so tests can redirect it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def ragqa_home() -> Path:
    return Path(os.environ.get("RAGQA_HOME", "var")).expanduser().resolve()


def make_private(home: Path | None = None) -> Path:
    """Called once by every entry point: the home becomes 0700 and everything this process creates is private.

    The home holds every question, answer and rating (feedback.db), the index of the user's documents, password
    hashes (users.json) and models. A umask of 077 makes SQLite's database and WAL files, the index, exports,
    runs and checkpoints 0600/0700 wherever they are created, instead of chmod calls at each write.
    """
    os.umask(0o077)
    home = home or ragqa_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = home.stat()
    if st.st_mode & 0o077 and st.st_uid == os.getuid():  # a home made before (default 0755): tighten it
        os.chmod(home, 0o700)
    return home


@dataclass(frozen=True)
class Paths:
    """The on-disk layout below one home folder (documented in the README)."""

    home: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(ragqa_home())

    @property
    def config_file(self) -> Path:
        return self.home / "config.yaml"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def feedback_db(self) -> Path:
        return self.home / "feedback.db"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"
