"""The model registry survives one damaged version and refuses version folders that are symlinks (real files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.cli import main
from model_store.registry import ModelRegistry, RegistryError


def _publish(registry: ModelRegistry, n: int) -> None:
    for i in range(n):
        registry.publish(
            lambda d, i=i: (d / "config.json").write_text(json.dumps({"i": i})), {"kind": "base"}
        )


def test_models_list_survives_a_corrupt_manifest(
    ragqa_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(ragqa_home / "models")
    _publish(registry, 3)
    (ragqa_home / "models" / "v0002" / "manifest.json").write_text("{not json")
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[2:7] for line in lines] == ["v0001", "v0002", "v0003"]
    assert lines[1].startswith("! v0002  BROKEN:") and "not valid JSON" in lines[1]
    assert lines[2].startswith("* v0003")
    assert [v.name for v in registry.versions()] == ["v0001", "v0003"]
    (ragqa_home / "models" / "v0001" / "manifest.json").write_text("[]")
    assert main(["models", "list"]) == 0
    assert "! v0001  BROKEN:" in capsys.readouterr().out
    assert main(["models", "rollback", "v0002"]) == 1  # a broken version cannot be made current
    assert registry.current_name() == "v0003"


def test_a_symlinked_version_folder_is_refused(
    ragqa_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(ragqa_home / "models")
    _publish(registry, 1)
    elsewhere = tmp_path / "planted"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    (elsewhere / "manifest.json").write_text(json.dumps({"version": "v0002", "kind": "base"}))
    os.symlink(elsewhere, ragqa_home / "models" / "v0002")
    assert main(["models", "rollback", "v0002"]) == 1
    assert "is a symlink" in capsys.readouterr().err
    assert registry.current_name() == "v0001"
    with pytest.raises(RegistryError, match="is a symlink"):
        registry.switch("v0002")
    os.unlink(ragqa_home / "models" / "current")  # planted by hand: still never served
    os.symlink("v0002", ragqa_home / "models" / "current")
    with pytest.raises(RegistryError, match="is a symlink"):
        registry.current()
    assert main(["models", "list"]) == 0
    assert "! v0002  BROKEN: model version v0002 is a symlink" in capsys.readouterr().out
