"""`ragqa setup` re-chunks the bundled guide's index when it was cut before chunks started at sentences, and only
that index: one of the user's own documents is theirs to re-ingest."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from app.cli import DEMO_CORPUS, demo_index_cut_the_old_way
from retrieval.embedder import HashEmbedder
from retrieval.ingest import ingest


def _forget_starts(index_dir: Path) -> None:
    """As an index written before chunk starts were recorded (it reads as cut at word starts)."""
    meta_path = index_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["chunking"]["starts"]
    meta_path.write_text(json.dumps(meta))


def test_only_an_old_cut_index_of_the_bundled_guide_is_re_chunked(tmp_path: Path) -> None:
    embedder = HashEmbedder(dim=64)
    guide, mine = tmp_path / "guide-index", tmp_path / "my-index"
    assert not demo_index_cut_the_old_way(guide)  # nothing ingested yet: setup ingests the guide anyway
    ingest(DEMO_CORPUS, guide, embedder, progress=False)
    assert not demo_index_cut_the_old_way(guide)  # cut the current way
    _forget_starts(guide)
    assert demo_index_cut_the_old_way(guide)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("The ferry leaves at nine. It returns at five.\n")
    ingest(docs, mine, embedder, progress=False)
    _forget_starts(mine)
    assert not demo_index_cut_the_old_way(mine)  # the user's documents: doctor advises, setup leaves it
    # After setup's ingest of the guide the index is cut at sentences and no longer qualifies.
    ingest(DEMO_CORPUS, guide, embedder, progress=False)
    assert json.loads((guide / "meta.json").read_text())["chunking"]["starts"] == "sentence"
    assert not demo_index_cut_the_old_way(guide)


def _setup_home(tmp_path: Path, monkeypatch) -> tuple[Path, list]:
    """A home whose index is the bundled guide cut the old way; setup's model steps stubbed, its ingest recorded."""
    import app.cli as cli
    import model_store.base_model as base_model

    home = tmp_path / "home"
    monkeypatch.setenv("RAGQA_HOME", str(home))
    ingest(DEMO_CORPUS, home / "index", HashEmbedder(dim=64), progress=False)
    _forget_starts(home / "index")
    monkeypatch.setattr(
        base_model, "ensure_base_model", lambda *a, **k: SimpleNamespace(name="v0001", manifest={})
    )
    calls: list = []
    monkeypatch.setattr(cli, "_run_ingest", lambda cfg, root, rebuild: calls.append((root, rebuild)) or 0)
    return home, calls


def test_setup_re_chunks_the_old_guide_index_unless_told_not_to(tmp_path: Path, monkeypatch) -> None:
    from app.cli import main

    _, calls = _setup_home(tmp_path, monkeypatch)
    assert main(["setup", "--no-starter", "--no-demo"]) == 0
    assert calls == []
    assert main(["setup", "--no-starter"]) == 0
    assert calls == [(DEMO_CORPUS, True)]


def test_a_failed_re_chunk_keeps_the_old_index_and_setup_goes_on(tmp_path: Path, monkeypatch, capsys) -> None:
    """Another embedder configured since: the rebuild fails, the index stays as it was, setup still succeeds."""
    import app.cli as cli
    from retrieval.errors import IndexMismatchError

    home, _ = _setup_home(tmp_path, monkeypatch)
    before = (home / "index" / "meta.json").read_text()

    def mismatch(cfg, root, rebuild):
        raise IndexMismatchError("the index was built with another embedder")

    monkeypatch.setattr(cli, "_run_ingest", mismatch)
    assert cli.main(["setup", "--no-starter"]) == 0
    assert "kept as it was" in capsys.readouterr().out
    assert (home / "index" / "meta.json").read_text() == before
