from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrieval.errors import IngestError, InvalidConfigError
from retrieval.index import HybridIndex
from retrieval.ingest import IngestReport, ingest
from retrieval.retriever import Retriever


def test_first_ingest_report(docs_root: Path, index_dir: Path, embedder) -> None:
    report = ingest(docs_root, index_dir, embedder, progress=False)
    assert isinstance(report, IngestReport)
    assert (report.files_seen, report.indexed, report.updated, report.unchanged, report.removed) == (
        3,
        3,
        0,
        0,
        0,
    )
    assert report.chunks_total == report.chunks_added == 3
    assert report.skipped == []
    assert "3 new" in report.summary()
    assert embedder.texts_encoded == 3


def test_incremental_unchanged_changed_deleted(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    first = HybridIndex.open(index_dir, embedder)
    tea_ids = first.files["guide/tea.txt"].chunk_ids
    encoded_before = embedder.texts_encoded

    # Nothing changed: nothing embedded, nothing written.
    meta_mtime = (index_dir / "meta.json").stat().st_mtime_ns
    report = ingest(docs_root, index_dir, embedder, progress=False)
    assert (report.unchanged, report.indexed, report.updated, report.removed) == (3, 0, 0, 0)
    assert embedder.texts_encoded == encoded_before
    assert (index_dir / "meta.json").stat().st_mtime_ns == meta_mtime

    # One changed, one deleted, one added: only the changed and the new file are embedded.
    (docs_root / "volcano.md").write_text("Mount Brellin erupted again in 2024, covering Tarn in ash.")
    (docs_root / "guide" / "ferry.rst").unlink()
    (docs_root / "new.md").write_text("Submarine Kestrel-9 dives to 400 metres.")
    report = ingest(docs_root, index_dir, embedder, progress=False)
    assert (report.indexed, report.updated, report.unchanged, report.removed) == (1, 1, 1, 1)
    assert embedder.texts_encoded == encoded_before + 2
    assert report.chunks_added == 2 and report.chunks_total == 3

    index = HybridIndex.open(index_dir, embedder)
    assert set(index.files) == {"volcano.md", "guide/tea.txt", "new.md"}
    assert index.files["guide/tea.txt"].chunk_ids == tea_ids  # kept, same ids
    old_row = first.row_of(tea_ids[0])
    assert (index.vectors[index.row_of(tea_ids[0])] == first.vectors[old_row]).all()  # stored vector reused
    retriever = Retriever(index, embedder)
    assert retriever.search("Brellin 2024 ash", k=1)[0].text.startswith("Mount Brellin erupted again")
    assert all(p.source != "guide/ferry.rst" for p in retriever.search("ferry Lutz Island", k=3))


def test_rebuild_reembeds_everything(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    report = ingest(docs_root, index_dir, embedder, rebuild=True, progress=False)
    assert report.indexed == 3 and embedder.texts_encoded == 6


def test_chunking_change_rechunks(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    report = ingest(docs_root, index_dir, embedder, chunk_tokens=5, overlap=1, progress=False)
    assert report.updated == 3 and report.chunks_total > 3
    assert HybridIndex.open(index_dir, embedder).chunking.chunk_tokens == 5


def test_single_file_ingest_adds_without_removing(
    docs_root: Path, tmp_path: Path, index_dir: Path, embedder
) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    extra = tmp_path / "elsewhere" / "notes.txt"
    extra.parent.mkdir()
    extra.write_text("The lighthouse keeper is named Odile Varga.")
    report = ingest(extra, index_dir, embedder, progress=False)
    assert (report.files_seen, report.indexed, report.removed) == (1, 1, 0)
    index = HybridIndex.open(index_dir, embedder)
    assert set(index.files) == {"volcano.md", "guide/tea.txt", "guide/ferry.rst", "notes.txt"}
    extra.write_text("The lighthouse keeper is now named Bram Okafor.")
    report = ingest(extra, index_dir, embedder, progress=False)
    assert report.updated == 1 and report.chunks_total == 4
    hit = Retriever(HybridIndex.open(index_dir, embedder), embedder).search("lighthouse keeper", k=1)[0]
    assert "Bram Okafor" in hit.text


def test_index_inside_root_is_not_ingested(tmp_path: Path, embedder, write_docs) -> None:
    root = write_docs(tmp_path / "root", {"a.md": "alpha text"})
    report = ingest(root, root / "var" / "index", embedder, progress=False)
    report = ingest(root, root / "var" / "index", embedder, progress=False)
    assert report.files_seen == 1 and report.unchanged == 1


def test_bad_files_skipped_with_reasons(tmp_path: Path, index_dir: Path, embedder, write_docs) -> None:
    root = write_docs(
        tmp_path / "docs",
        {
            "good.md": "A good document about pelicans.",
            "binary.txt": b"abc\x00\x01\x02def",
            "empty.md": b"",
            "latin1.txt": "caf\u00e9 cr\u00e8me".encode("cp1252"),
            "broken.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage with no xref",
            "huge.txt": b"x" * 5000,
            "image.png": b"\x89PNG....",
            "whitespace.txt": "   \n\n  ",
        },
    )
    os.symlink("loop_b", root / "loop_a.md")
    os.symlink("loop_a.md", root / "loop_b")
    os.symlink(".", root / "self")  # a folder symlink back to the root
    (root / "sub").mkdir()
    (root / "sub" / "inner.md").write_text("Inner document about herons.")
    os.symlink("sub", root / "a_alias")  # the same folder twice, not a loop; sorts before "sub"
    report = ingest(root, index_dir, embedder, max_file_bytes=4096, progress=False)
    reasons = dict(report.skipped)
    assert reasons["binary.txt"].startswith("binary file")
    assert reasons["empty.md"] == "empty file"
    assert reasons["latin1.txt"].startswith("not valid UTF-8")
    assert reasons["broken.pdf"].startswith("PDF")
    assert reasons["huge.txt"].startswith("too large")
    assert reasons["image.png"] == "unsupported type (.png)"
    assert reasons["whitespace.txt"] == "no text"
    assert reasons["loop_a.md"] == "symlink loop" and reasons["loop_b"] == "symlink loop"
    assert reasons["self"].startswith("symlink loop")
    assert reasons["a_alias"] == "symlink to a folder already ingested"
    assert report.indexed == 2
    assert set(HybridIndex.open(index_dir, embedder).files) == {"good.md", "sub/inner.md"}
    assert "skipped binary.txt" in report.summary()


def test_unreadable_file_skipped(tmp_path: Path, index_dir: Path, embedder, write_docs, monkeypatch) -> None:
    import builtins

    import retrieval.documents as documents

    root = write_docs(tmp_path / "docs", {"ok.md": "fine", "secret.md": "hidden"})

    def guarded_open(path, *args, **kwargs):
        # chmod 000 does not stop root (tests may run as root), so refuse the read the way the OS would.
        if str(path).endswith("secret.md"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(documents, "open", guarded_open, raising=False)
    report = ingest(root, index_dir, embedder, progress=False)
    assert dict(report.skipped)["secret.md"] == "permission denied" and report.indexed == 1


def test_file_vanishing_mid_ingest(
    tmp_path: Path, index_dir: Path, embedder, write_docs, monkeypatch
) -> None:
    import retrieval.documents as documents

    root = write_docs(tmp_path / "docs", {"a.md": "stays", "b.md": "goes away"})
    real_read = documents.read_bytes

    def read_after_delete(found, max_bytes):
        if found.relpath == "b.md":
            found.path.unlink()  # deleted between the walk and the read
        return real_read(found, max_bytes)

    monkeypatch.setattr("retrieval.ingest.read_bytes", read_after_delete)
    report = ingest(root, index_dir, embedder, progress=False)
    assert dict(report.skipped)["b.md"] == "file vanished during ingest" and report.indexed == 1


def test_bad_arguments(tmp_path: Path, index_dir: Path, embedder) -> None:
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "nope", index_dir, embedder, progress=False)
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidConfigError):
        ingest(tmp_path / "d", index_dir, embedder, chunk_tokens=10, overlap=10, progress=False)


def test_empty_folder_gives_empty_searchable_index(tmp_path: Path, index_dir: Path, embedder) -> None:
    (tmp_path / "empty").mkdir()
    report = ingest(tmp_path / "empty", index_dir, embedder, progress=False)
    assert report.chunks_total == 0
    assert Retriever(HybridIndex.open(index_dir, embedder), embedder).search("anything") == []


def test_single_file_cannot_change_chunking(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    with pytest.raises(InvalidConfigError, match="whole folder"):
        ingest(docs_root / "volcano.md", index_dir, embedder, chunk_tokens=50, overlap=5, progress=False)
    assert HybridIndex.open(index_dir, embedder).chunking.chunk_tokens == 200


def _as_written_before_chunk_starts(index_dir: Path) -> None:
    """Rewrite meta.json as an index of the first chunker has it: no `starts` recorded."""
    import json

    meta_path = index_dir / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["chunking"]["starts"]
    meta_path.write_text(json.dumps(meta), encoding="utf-8")


def test_an_index_cut_at_word_starts_is_rechunked_by_the_next_folder_ingest(
    docs_root: Path, index_dir: Path, embedder
) -> None:
    from retrieval.chunking import SENTENCE_STARTS, WORD_STARTS

    ingest(docs_root, index_dir, embedder, progress=False)
    assert HybridIndex.open(index_dir, embedder).chunking.starts == SENTENCE_STARTS
    _as_written_before_chunk_starts(index_dir)
    assert HybridIndex.open(index_dir, embedder).chunking.starts == WORD_STARTS
    report = ingest(docs_root, index_dir, embedder, progress=False)
    assert report.updated == 3  # nothing changed in the files: re-chunked because the chunker did
    assert HybridIndex.open(index_dir, embedder).chunking.starts == SENTENCE_STARTS


def test_one_file_added_to_an_index_cut_at_word_starts_keeps_them(
    docs_root: Path, tmp_path: Path, index_dir: Path, embedder
) -> None:
    """Adding one file must not fail (or re-chunk the others) because this program cuts chunks differently."""
    from retrieval.chunking import WORD_STARTS

    ingest(docs_root, index_dir, embedder, progress=False)
    _as_written_before_chunk_starts(index_dir)
    before = {c.chunk_id: c.text for c in HybridIndex.open(index_dir, embedder).chunks}
    extra = tmp_path / "elsewhere" / "notes.txt"
    extra.parent.mkdir()
    extra.write_text("The lighthouse keeper is named Odile Varga.")
    report = ingest(extra, index_dir, embedder, progress=False)
    assert (report.indexed, report.updated) == (1, 0)
    index = HybridIndex.open(index_dir, embedder)
    assert index.chunking.starts == WORD_STARTS
    assert {c.chunk_id: c.text for c in index.chunks if c.source != "notes.txt"} == before
