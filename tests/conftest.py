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
    from training.modeling import ensure_base_model
    from training.registry import ModelRegistry

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

    from training.modeling import tiny_llama_config

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out
