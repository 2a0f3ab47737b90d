"""Registry: publish through .partial + rename, atomic `current`, rollback, and crashes mid-publish."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry, RegistryError


def _write(text: str):
    def write(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        (folder / "weights.bin").write_text(text)

    return write


def test_publish_switch_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions() == [] and reg.current() is None
    v1 = reg.publish(_write("one"), {"kind": "base"})
    v2 = reg.publish(_write("two"), {"kind": "rlhf", "run_id": "r1"})
    assert [v.name for v in reg.versions()] == ["v0001", "v0002"]
    assert reg.current_name() == "v0002"
    assert v2.manifest["parent"] == "v0001" and v1.manifest["parent"] is None
    assert json.loads((v2.path / "manifest.json").read_text())["run_id"] == "r1"
    assert os.readlink(reg.root / "current") == "v0002"  # relative: the home folder can move
    assert reg.rollback().name == "v0001"
    assert reg.current_name() == "v0001"
    assert reg.switch("v0002").name == "v0002"
    assert reg.base().name == "v0001"


def test_publish_without_switch(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    reg.publish(_write("one"), {})
    reg.publish(_write("two"), {}, make_current=False)
    assert reg.current_name() == "v0001"
    assert len(reg.versions()) == 2


def test_crash_during_publish_leaves_current_and_no_version(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    reg.publish(_write("one"), {})

    def crash(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        reg.publish(crash, {})
    assert reg.current_name() == "v0001"
    assert [v.name for v in reg.versions()] == ["v0001"]
    assert not list(reg.root.glob("*.partial"))


def test_partial_left_by_a_killed_publish_is_never_listed_and_is_cleaned(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    reg.publish(_write("one"), {})
    (reg.root / "v0002.partial").mkdir()  # what kill -9 during write() leaves behind
    (reg.root / "v0002.partial" / "config.json").write_text("{}")
    assert [v.name for v in reg.versions()] == ["v0001"]
    with pytest.raises(RegistryError):
        reg.switch("v0002.partial")
    v = reg.publish(_write("two"), {})
    assert v.name == "v0002" and reg.current_name() == "v0002"
    assert not (reg.root / "v0002.partial").exists()


def test_errors_are_clear(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError, match="no current model version"):
        reg.rollback()
    reg.publish(_write("one"), {})
    with pytest.raises(RegistryError, match="first version"):
        reg.rollback()
    with pytest.raises(RegistryError, match=r"no model version 'v0009' \(published versions: v0001\)"):
        reg.switch("v0009")
    (reg.root / "v0001" / "manifest.json").write_text("{broken")
    with pytest.raises(RegistryError, match="not valid JSON"):
        reg.get("v0001")


def test_publish_folder_requires_a_model_folder(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError, match="not a model folder"):
        reg.publish_folder(tmp_path, {})
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "sub").mkdir()
    (src / "sub" / "x.txt").write_text("x")
    v = reg.publish_folder(src, {"kind": "test"})
    assert (v.path / "sub" / "x.txt").read_text() == "x"
