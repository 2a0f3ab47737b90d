"""Ingest never leaves the folder it is given, never reads the app's own state, and keeps NULs out (real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.cli import main
from retrieval.documents import HIDDEN, OUTSIDE, PRIVATE
from retrieval.embedder import HashEmbedder
from retrieval.errors import IngestError
from retrieval.index import HybridIndex
from retrieval.ingest import ingest


@pytest.fixture
def docs(tmp_path: Path, ragqa_home: Path) -> Path:
    (ragqa_home / "users.json").write_text(
        '{"alice": {"role": "admin", "password": "pbkdf2_sha256$1$00$ff"}}'
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("The vault code of Orrin Bay is 4411.")
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text("The Zorbium Tower opened on 14 March 1893.")
    (root / "sub" / "ships.md").write_text("The Marigold Vance has a crew of 31.")
    os.symlink("/etc/passwd", root / "passwd.md")
    os.symlink(ragqa_home / "users.json", root / "users.md")
    os.symlink(outside, root / "elsewhere")
    os.symlink("guide.md", root / "guide-alias.md")  # inside the folder: fine
    os.symlink("../guide.md", root / "sub" / "up.md")  # still inside the folder: fine
    (root / ".env").write_text("API_KEY=hunter2")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    return root


def test_symlinks_out_of_the_folder_and_dot_files_are_skipped_and_listed(
    docs: Path, ragqa_home: Path
) -> None:
    report = ingest(docs, ragqa_home / "index", HashEmbedder(), progress=False)
    skipped = dict(report.skipped)
    assert skipped["passwd.md"] == OUTSIDE and skipped["users.md"] == OUTSIDE
    assert skipped["elsewhere"] == OUTSIDE
    assert skipped[".env"] == HIDDEN and skipped[".git"] == HIDDEN
    assert "skipped passwd.md: symlink pointing outside" in report.summary()
    index = HybridIndex.open(ragqa_home / "index", HashEmbedder())
    assert sorted(index.files) == ["guide-alias.md", "guide.md", "sub/ships.md", "sub/up.md"]
    text = " ".join(c.text for c in index.chunks)
    assert "root:" not in text and "pbkdf2" not in text and "4411" not in text and "hunter2" not in text


def test_the_app_home_is_never_ingested(docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = docs / "var"  # RAGQA_HOME inside the documents folder (e.g. `ragqa ingest .` in the project)
    home.mkdir()
    (home / "users.json").write_text('{"alice": {"role": "admin", "password": "pbkdf2_sha256$1$00$ff"}}')
    (home / "notes.md").write_text("private state")
    monkeypatch.setenv("RAGQA_HOME", str(home))
    report = ingest(docs, tmp_path / "elsewhere-index", HashEmbedder(), progress=False)
    assert dict(report.skipped)["var"] == PRIVATE
    assert not any(
        rel.startswith("var/") for rel in HybridIndex.open(tmp_path / "elsewhere-index", HashEmbedder()).files
    )
    with pytest.raises(IngestError, match="the app's own state"):
        ingest(home, tmp_path / "other-index", HashEmbedder(), progress=False)
    with pytest.raises(IngestError, match="the app's own state"):
        ingest(home / "users.json", tmp_path / "other-index", HashEmbedder(), progress=False)


def test_cli_refuses_to_ingest_the_home(ragqa_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(ragqa_home)]) == 1
    assert "the app's own state" in capsys.readouterr().err


def test_a_nul_anywhere_in_a_text_file_skips_it(tmp_path: Path, ragqa_home: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "late-nul.md").write_bytes(b"plain words " * 1000 + b"\x00 more words")  # NUL after 8 KB
    (root / "fine.md").write_text("The Zorbium Tower opened on 14 March 1893.")
    report = ingest(root, ragqa_home / "index", HashEmbedder(), progress=False)
    assert dict(report.skipped)["late-nul.md"] == "binary file (contains NUL bytes)"
    index = HybridIndex.open(ragqa_home / "index", HashEmbedder())
    assert list(index.files) == ["fine.md"] and not any("\x00" in c.text for c in index.chunks)


def test_an_index_made_before_the_check_drops_its_nul_passages(
    tmp_path: Path, ragqa_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retrieval import ingest as ingest_module

    root = tmp_path / "docs"
    root.mkdir()
    (root / "late-nul.md").write_bytes(b"plain words " * 1000 + b"\x00 more words")
    (root / "fine.md").write_text("The Zorbium Tower opened on 14 March 1893.")
    with monkeypatch.context() as old:  # the index as the old 8 KB check built it
        old.setattr(ingest_module, "extract_text", lambda raw: raw.data.decode("utf-8"))
        ingest(root, ragqa_home / "index", HashEmbedder(), progress=False)
    before = HybridIndex.open(ragqa_home / "index", HashEmbedder())
    assert "late-nul.md" in before.files and any("\x00" in c.text for c in before.chunks)
    report = ingest(
        root, ragqa_home / "index", HashEmbedder(), progress=False
    )  # unchanged bytes: re-read anyway
    assert report.removed == 1 and dict(report.skipped)["late-nul.md"].startswith("binary file")
    index = HybridIndex.open(ragqa_home / "index", HashEmbedder())
    assert list(index.files) == ["fine.md"] and not any("\x00" in c.text for c in index.chunks)
