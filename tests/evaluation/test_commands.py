"""The command line: `eval` through the real parser with the real MiniLM embedder, and one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from app.cli import main
from evaluation.commands import add_commands


def test_commands_register_on_a_subparser() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", "v0001", "v0002", "--qa", "f.json", "--limit", "3"])
    assert (args.version_a, args.version_b, args.limit, args.rm) == ("v0001", "v0002", 3, None)
    args = parser.parse_args(["eval-rm", "--pairs", "p.jsonl", "--rm", "rm"])
    assert args.func.__name__ == "cmd_eval_rm" and args.pairs == "p.jsonl"
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--qa", "f.json", "--limit", "0"])
    assert parser.parse_args(["eval", "--qa", "f.json"]).batch_size == 16
    assert parser.parse_args(["compare", "a", "b", "--qa", "f.json", "--batch-size", "1"]).batch_size == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--qa", "f.json", "--batch-size", "0"])


def test_eval_command_with_the_real_embedder(tiny_registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    """The real twin of the HashEmbedder runs: MiniLM embeddings + BM25 over the NQ fixture's passages."""
    out = tmp_path / "out"
    rc = main(["eval", "--qa", str(fixtures_dir / "nq_open.jsonl"), "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["format"] == "nq-open"
    assert report["settings"]["embedder"] != "hash-ngrams-v1"
    assert report["metrics"]["retrieval"]["recall@1"] == 1.0  # 3 passages, each question's own one first


def test_errors_are_one_line(tiny_registry: Path, fixtures_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["eval", "--qa", str(tmp_path / "missing.json")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.json'} does not exist"
    assert main(["eval", "--qa", str(fixtures_dir / "unknown.jsonl")]) == 1
    assert "found keys label, query" in capsys.readouterr().err
    assert main(["eval-rm", "--pairs", str(fixtures_dir / "hh_pairs.jsonl"), "--rm", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert main(["eval", "--qa", str(fixtures_dir / "squad_v2.json"), "--model", "v0042"]) == 1
    assert "no model version 'v0042'" in capsys.readouterr().err
