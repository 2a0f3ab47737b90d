"""Bad input through the CLI: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from app.cli import main


def test_empty_and_too_long_questions(capsys) -> None:
    assert main(["ask", "   "]) == 1
    err = capsys.readouterr().err
    assert "the question is empty" in err and "Traceback" not in err
    assert main(["ask", "x" * 5000]) == 1
    assert "at most 2000 characters" in capsys.readouterr().err


def test_no_index_yet(ragqa_home: Path, capsys) -> None:
    assert main(["ask", "anything?"]) == 1
    assert "ragqa ingest" in capsys.readouterr().err


def test_ingest_missing_path(capsys, tmp_path: Path) -> None:
    assert main(["ingest", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bad_config_key(ragqa_home: Path, capsys) -> None:
    (ragqa_home / "config.yaml").write_text("temprature: 3\n")
    assert main(["ask", "q?"]) == 1
    assert "unknown config key" in capsys.readouterr().err


def test_models_list_current_rollback(ragqa_home: Path, tiny_llama_dir: Path, capsys) -> None:
    from model_store.registry import ModelRegistry

    assert main(["models", "current"]) == 1
    assert "ragqa setup" in capsys.readouterr().err
    reg = ModelRegistry(ragqa_home / "models")
    reg.publish_folder(tiny_llama_dir, {"kind": "base"})
    reg.publish_folder(tiny_llama_dir, {"kind": "rlhf", "run_id": "run-1"})
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "* v0002" in out and "  v0001" in out and "run-1" in out
    assert main(["models", "rollback"]) == 0
    assert "current is now v0001" in capsys.readouterr().out
    assert main(["models", "current", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0001"
    assert main(["models", "rollback", "v0009"]) == 1
    assert "no model version 'v0009'" in capsys.readouterr().err


def test_broken_model_version_is_a_clear_error(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from app.config import AppConfig
    from app.generator import GenerationError, Generator
    from model_store.registry import ModelRegistry

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    os.remove(broken / "model.safetensors")
    reg = ModelRegistry(ragqa_home / "models")
    reg.publish_folder(broken, {"kind": "broken"})
    gen = Generator(reg, dtype=AppConfig.load().dtype)
    try:
        gen.current()
    except GenerationError as e:
        assert "v0001 cannot be loaded" in str(e) and "rollback" in str(e)
    else:
        raise AssertionError("a version without weights must not load")
