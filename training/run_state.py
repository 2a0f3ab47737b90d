"""The state of one retrain run (state.json, written atomically after every stage) and where it starts.

A run killed at any point resumes with `--resume RUN_ID`: `RunState.finished` says which stages are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from settings.paths import Paths
from training.config import TrainConfig
from training.errors import TrainingError

STATE = "state.json"
# Stages whose "skipped" is final on resume; publish is retried (a later --force may publish).
FINAL_WHEN_SKIPPED = {"export", "sft", "rm", "ppo", "dpo", "kto", "merge", "evaluate"}


class RetrainError(TrainingError):
    """A retrain could not run or finish; the message says why and what to do."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=1, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RunState:
    """state.json of one run; saved after every change."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.data = data

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        path = run_dir / STATE
        if not path.is_file():
            raise RetrainError(f"run {run_dir.name} has no {STATE}; it cannot be resumed (start a new run)")
        return cls(run_dir, json.loads(path.read_text()))

    def save(self) -> None:
        write_json_atomic(self.run_dir / STATE, self.data)

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name) or {}

    def finished(self, name: str) -> bool:
        status = self.stage(name).get("status")
        return status == "done" or (status == "skipped" and name in FINAL_WHEN_SKIPPED)

    def record(self, name: str, result: dict[str, Any]) -> None:
        self.data["stages"][name] = {**result, "finished_at": now_iso()}
        self.save()


def start_version(registry: Any, start_from: str) -> Any:
    """The version a retrain starts from: the starter (else the base), the base, or the current version."""
    from model_store.starter import starter_version

    if start_from == "starter":
        return starter_version(registry) or registry.base()
    return registry.base() if start_from == "base" else registry.current()


def start_model(cfg: TrainConfig, paths: Paths, start_from: str) -> dict[str, Any]:
    from model_store.base_model import ensure_base_model
    from model_store.gguf import gguf_extras
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(paths.models_dir)
    ensure_base_model(registry, cfg.model.base, extras=gguf_extras(cfg.publish.gguf))
    version = start_version(registry, start_from)
    if version is None:
        raise RetrainError("the model registry is empty; run `ragqa setup` first")
    return {"name": version.name, "path": str(version.path), "base_model": version.manifest.get("base_model")}
