"""Where state lives: everything under RAGQA_HOME (default ./var), so tests can redirect it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def ragqa_home() -> Path:
    return Path(os.environ.get("RAGQA_HOME", "var")).expanduser().resolve()


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
