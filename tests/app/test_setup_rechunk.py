"""`ragqa setup` re-chunks the bundled guide's index when it was cut before chunks started at sentences, and only
that index: one of the user's own documents is theirs to re-ingest."""

from __future__ import annotations

import json
from pathlib import Path

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
