"""Disk full (ENOSPC) while `ragqa retrain` publishes: `current` stays, nothing half-published, resume works.

shutil.copy2 raises OSError(ENOSPC) for files copied into the registry's `.partial` folder, as a full disk
would; everything else (training, checkpoints) writes normally. The registry-level twin is in
tests/training/test_registry.py.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry
from tests.training.conftest import TINY_CONFIG, tiny_model_dir, tiny_registry, write_export  # noqa: F401

REAL_COPY2 = shutil.copy2


def _full_disk_copy2(src: object, dst: object, *args: object, **kwargs: object) -> object:
    if "/models/" in str(dst) and ".partial" in str(dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))
    return REAL_COPY2(src, dst, *args, **kwargs)


def _retrain(
    monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int | None, str, str, BaseException | None]:
    """`ragqa retrain ARGV` in this process (the real CLI entry point), with stdout/stderr captured."""
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        try:
            return main(["retrain", *argv]), out.getvalue(), err.getvalue(), None
        except BaseException as e:  # noqa: BLE001 - what escapes the CLI is the finding
            return None, out.getvalue(), err.getvalue(), e


def _run_with_full_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple:
    export = write_export(tmp_path / "export")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "copy2", _full_disk_copy2)
        return _retrain(
            monkeypatch,
            "--config",
            str(TINY_CONFIG),
            "--set",
            f"data.export_dir={export}",
            "--stages",
            "sft",
            "--force",
        )


def test_disk_full_during_publish_keeps_current_and_resume_publishes(
    tiny_registry: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _code, _out, _err, _escaped = _run_with_full_disk(monkeypatch, tmp_path)
    registry = ModelRegistry(tiny_registry)
    assert registry.current_name() == "v0001" and [v.name for v in registry.versions()] == ["v0001"]
    assert not list(tiny_registry.glob("*.partial")), "the failed publish left its .partial folder"
    (run_dir,) = (tiny_registry.parent / "runs").iterdir()
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "failed" and state["stages"]["publish"]["status"] == "failed"
    assert "No space left on device" in state["stages"]["publish"]["reason"]
    assert state["stages"]["sft"]["status"] == "done"

    code, out, err, escaped = _retrain(monkeypatch, "--resume", run_dir.name, "--force")
    assert escaped is None and code == 0, (escaped, err)
    assert registry.current_name() == "v0002" and registry.current().manifest["run_id"] == run_dir.name


def test_disk_full_during_publish_is_one_clear_error_line(
    tiny_registry: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _out, err, escaped = _run_with_full_disk(monkeypatch, tmp_path)
    assert escaped is None, f"escaped the CLI: {type(escaped).__name__}: {escaped}"
    assert code == 1
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
