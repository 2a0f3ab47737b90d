from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import retrieval.index as index_module
from retrieval.chunking import ChunkingParams
from retrieval.embedder import HashEmbedder
from retrieval.errors import IndexCorruptError, IndexMismatchError, IndexMissingError, RetrievalError
from retrieval.index import FileEntry, HybridIndex
from retrieval.ingest import ingest
from retrieval.retriever import Retriever
from retrieval.types import Chunk

QUESTIONS = ["dormant volcano height", "green tea cups", "ferry morning", "island"]


def results(index: HybridIndex, embedder) -> list[list[tuple[str, float]]]:
    r = Retriever(index, embedder)
    return [[(p.chunk_id, p.score) for p in r.search(q, k=3)] for q in QUESTIONS]


def test_round_trip_same_results(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    opened = HybridIndex.open(index_dir, embedder)
    meta = json.loads((index_dir / "meta.json").read_text())
    assert meta["embedder"] == {"name": "hash-ngrams-v1", "dim": 64}
    assert meta["counts"] == {"chunks": 3, "files": 3}
    assert meta["faiss_index_type"] == "IndexFlatIP"
    assert set(opened.files) == {"volcano.md", "guide/tea.txt", "guide/ferry.rst"}
    # Rebuilding in memory from the same chunks and vectors gives the same answers as the opened copy.
    rebuilt = HybridIndex.build(
        opened.chunks,
        np.asarray(opened.vectors),
        embedder_name=embedder.name,
        dim=embedder.dim,
        chunking=opened.chunking,
        files=opened.files,
    )
    assert results(opened, embedder) == results(rebuilt, embedder)
    assert results(opened, embedder)[2][0][0] == opened.files["guide/ferry.rst"].chunk_ids[0]


def test_hnsw_above_threshold_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, dim = 300, 16
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(f"id{i:04d}", f"f{i}.txt", f"word{i} common", 0, f"h{i}") for i in range(n)]
    files = {c.source: FileEntry(c.doc_hash, 1, 0.0, (c.chunk_id,)) for c in chunks}
    built = HybridIndex.build(
        chunks, vecs, embedder_name="x", dim=dim, chunking=ChunkingParams(), files=files, hnsw_threshold=100
    )
    assert built.faiss_type == "IndexHNSWFlat"
    built.save(tmp_path / "idx")
    opened = HybridIndex.open(tmp_path / "idx")
    for i in (0, 17, 299):
        assert opened.dense_search(vecs[i], 1)[0][0] == i  # a vector is its own nearest neighbour
        assert opened.bm25_search(f"word{i}", 5)[0][0] == i


def test_missing_index(index_dir: Path, embedder) -> None:
    with pytest.raises(IndexMissingError, match="ragqa ingest PATH"):
        HybridIndex.open(index_dir, embedder)


def test_embedder_mismatch(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        HybridIndex.open(index_dir, HashEmbedder(dim=32))

    class Renamed(HashEmbedder):
        def __init__(self) -> None:
            super().__init__(dim=64)
            self.name = "other-model"

    with pytest.raises(IndexMismatchError, match="other-model"):
        HybridIndex.open(index_dir, Renamed())
    with pytest.raises(IndexMismatchError, match="--rebuild"):
        Retriever(HybridIndex.open(index_dir), Renamed())
    with pytest.raises(IndexMismatchError):
        ingest(docs_root, index_dir, Renamed(), progress=False)
    ingest(docs_root, index_dir, Renamed(), rebuild=True, progress=False)
    assert HybridIndex.open(index_dir, Renamed()).embedder_name == "other-model"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda d: (d / "meta.json").write_text("{not json"), "meta.json"),
        (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
        (lambda d: (d / "faiss.index").unlink(), "faiss.index is missing"),
        (lambda d: _truncate(d / "faiss.index"), "faiss"),
        (lambda d: _truncate(d / "vectors.npy"), "vectors.npy"),
        (lambda d: _truncate(d / "chunks.jsonl"), "chunk"),
        (
            lambda d: (d / "chunks.jsonl").write_text(
                (d / "chunks.jsonl").read_text().splitlines()[0] + "\n"
            ),
            "chunks",
        ),
        (lambda d: _truncate(d / "bm25" / "data.csc.index.npy"), "bm25"),
        (lambda d: _truncate(d / "bm25" / "vocab.index.json"), "bm25"),
        (lambda d: (d / "files.json").write_text("[]"), "files.json"),
    ],
    ids=[
        "bad-meta",
        "no-meta",
        "no-faiss",
        "short-faiss",
        "short-vectors",
        "short-chunks",
        "fewer-chunks",
        "short-bm25",
        "bad-bm25-vocab",
        "bad-manifest",
    ],
)
def test_corrupt_index_raises_with_hint(docs_root: Path, index_dir: Path, embedder, damage, problem) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    damage(index_dir)
    with pytest.raises(IndexCorruptError, match="--rebuild") as info:
        HybridIndex.open(index_dir, embedder)
    assert problem in str(info.value)
    # Ingest refuses to build on a damaged index too, and --rebuild repairs it.
    with pytest.raises(IndexCorruptError):
        ingest(docs_root, index_dir, embedder, progress=False)
    ingest(docs_root, index_dir, embedder, rebuild=True, progress=False)
    assert len(HybridIndex.open(index_dir, embedder)) == 3


def test_crash_during_swap_leaves_old_index(
    docs_root: Path, index_dir: Path, embedder, monkeypatch, write_docs
) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    before = results(HybridIndex.open(index_dir, embedder), embedder)
    write_docs(docs_root, {"new.md": "Brand new document about submarines."})

    def crash(new_dir: Path, target: Path) -> None:
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(index_module, "_swap_in", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest(docs_root, index_dir, embedder, progress=False)
    reopened = HybridIndex.open(index_dir, embedder)
    assert "new.md" not in reopened.files and results(reopened, embedder) == before
    assert [p.name for p in index_dir.parent.iterdir() if ".tmp-" in p.name] == []  # temp folder cleaned


def test_crash_between_renames_is_recovered(
    docs_root: Path, index_dir: Path, embedder, monkeypatch, write_docs
) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    real_rename = index_module.os.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old index already moved aside, new one not yet in place
            raise OSError("disk yanked")
        real_rename(src, dst)

    write_docs(docs_root, {"new.md": "Brand new document about submarines."})
    monkeypatch.setattr(index_module.os, "rename", rename_then_die)
    with pytest.raises(OSError):
        ingest(docs_root, index_dir, embedder, progress=False)
    monkeypatch.setattr(index_module.os, "rename", real_rename)
    assert not index_dir.exists()
    opened = HybridIndex.open(index_dir, embedder)  # puts the old copy back
    assert set(opened.files) == {"volcano.md", "guide/tea.txt", "guide/ferry.rst"}
    # The next ingest cleans up and completes.
    report = ingest(docs_root, index_dir, embedder, progress=False)
    assert report.indexed == 1 and "new.md" in HybridIndex.open(index_dir, embedder).files
    assert sorted(p.name for p in index_dir.parent.iterdir() if p.name.startswith(".index.")) == [
        ".index.lock"
    ]


def test_errors_share_a_base() -> None:
    assert issubclass(IndexCorruptError, RetrievalError) and issubclass(IndexMismatchError, RetrievalError)


def test_reader_waits_for_a_writer_between_renames(docs_root: Path, index_dir: Path, embedder) -> None:
    """A reader that finds the folder moved aside by a live writer waits instead of 'repairing' it."""
    import threading

    ingest(docs_root, index_dir, embedder, progress=False)
    aside = index_dir.with_name(".index.old-test")
    with index_module.writer_lock(index_dir):
        index_dir.rename(aside)  # the writer's first rename
        timer = threading.Timer(0.2, lambda: aside.rename(index_dir))  # ...and, later, the second
        timer.start()
        opened = HybridIndex.open(index_dir, embedder)
        timer.join()
    assert len(opened) == 3 and not aside.exists()


def test_index_summary_for_doctor(docs_root: Path, index_dir: Path, embedder) -> None:
    """What `ragqa doctor` reports: size, embedder and chunking of a good index; advice for one cut at word starts
    (written before chunk starts were recorded); a clear state for a missing or damaged one."""
    from app.doctor import _index_line
    from retrieval.index import index_summary

    assert index_summary(index_dir)["state"] == "missing"
    ingest(docs_root, index_dir, embedder)
    good = index_summary(index_dir)
    assert good["state"] == "ok" and good["chunks"] > 0 and good["files"] > 0
    assert good["chunking"]["starts"] == "sentence" and "advice" not in good
    assert "sentence starts" in _index_line(good)
    meta_path = index_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["chunking"]["starts"]  # as an index from before chunk starts were recorded
    meta_path.write_text(json.dumps(meta))
    old = index_summary(index_dir)
    assert old["chunking"]["starts"] == "word" and "re-chunks it" in old["advice"]
    assert "re-chunks" in _index_line(old)
    assert "`ragqa ingest " + str(docs_root.resolve()) + "`" in old["advice"]  # the folder it was cut from
    meta["counts"]["files"] = None  # odd values are reported, not a crash of `ragqa doctor`
    meta["chunking"] = "sentence"
    meta_path.write_text(json.dumps(meta))
    assert index_summary(index_dir)["state"] == "damaged"
    (index_dir / "vectors.npy").unlink()
    meta_path.write_text(json.dumps({**meta, "chunking": {"chunk_tokens": 200, "overlap": 40}}))
    assert "vectors.npy missing" in index_summary(index_dir)["error"]
    meta_path.write_text("{not json")
    damaged = index_summary(index_dir)
    assert damaged["state"] == "damaged" and "meta.json unreadable" in damaged["error"]
    assert _index_line(damaged).startswith("index:") and "damaged" in _index_line(damaged)
