"""The hybrid index: FAISS (dense, inner product on unit vectors) + BM25 (bm25s) over the same chunks.

On disk (one folder, normally Paths.index_dir):
    meta.json      format version, embedder name + dim, chunking params, counts, faiss type, created_at
    chunks.jsonl   one Chunk per line; line i is row i of the vectors, faiss id i and BM25 doc i
    vectors.npy    (n, dim) float32 unit vectors: kept so incremental ingest never re-embeds
    faiss.index    IndexFlatIP (exact) below `hnsw_threshold` chunks, IndexHNSWFlat above
    bm25/          the bm25s index (sparse score matrix, vocabulary, params)
    files.json     manifest: relpath -> {sha256, size, mtime, chunk_ids} for incremental ingest

Saving is atomic: everything is written and fsynced into a hidden sibling folder, then swapped in by
two renames (old aside, new in) and the old copy deleted, so a crash leaves a readable index: the
old one, or (crash between the renames) the old one set aside, which `open` puts back.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import WORD_STARTS, ChunkingParams
from retrieval.errors import REBUILD_HINT, IndexCorruptError, IndexMismatchError, IndexMissingError
from retrieval.types import Chunk

FORMAT_VERSION = 1
DEFAULT_HNSW_THRESHOLD = 50_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
BM25_STOPWORDS = "en"
# One query is searched on one OpenMP thread. Measured on the 2 shared cores under load (load avg ~4):
# IndexFlatIP single-query search with 2 threads p50 24 ms / p95 36 ms at 10k vectors, 65 / 92 ms at
# 100k; with 1 thread 0.3 / 4.5 ms and 7.9 / 15 ms (spinning OpenMP workers fight the other processes).
# Building (add) uses all cores.
SEARCH_THREADS = 1

META_FILE = "meta.json"
CHUNKS_FILE = "chunks.jsonl"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "faiss.index"
BM25_DIR = "bm25"
FILES_FILE = "files.json"


@dataclass(frozen=True)
class FileEntry:
    """What the manifest remembers of one ingested file."""

    sha256: str
    size: int
    mtime: float
    chunk_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size": self.size,
            "mtime": self.mtime,
            "chunk_ids": list(self.chunk_ids),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(str(d["sha256"]), int(d["size"]), float(d["mtime"]), tuple(str(c) for c in d["chunk_ids"]))


class HybridIndex:
    """Chunks + their vectors + a FAISS and a BM25 index over them, in the same row order.

    Build with `HybridIndex.build(...)`, persist with `save(dir)`, load with `HybridIndex.open(dir,
    embedder)`. Search with `dense_search` / `bm25_search` (row ids); `Retriever` fuses them.
    """

    def __init__(
        self,
        chunks: list[Chunk],
        vectors: np.ndarray,
        meta: dict[str, Any],
        files: dict[str, FileEntry],
        faiss_index: Any,
        bm25: Any | None,
    ) -> None:
        self.chunks = chunks
        self.vectors = vectors  # (n, dim) float32, may be a read-only memmap
        self.meta = meta
        self.files = files
        self._faiss = faiss_index
        self._bm25 = bm25
        self._row_of = {c.chunk_id: i for i, c in enumerate(chunks)}
        self.path: Path | None = None  # the folder it was opened from or saved to

    # ---- properties -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def embedder_name(self) -> str:
        return str(self.meta["embedder"]["name"])

    @property
    def dim(self) -> int:
        return int(self.meta["embedder"]["dim"])

    @property
    def chunking(self) -> ChunkingParams:
        c = self.meta["chunking"]
        # an index written before chunk starts were recorded was cut at word starts
        return ChunkingParams(int(c["chunk_tokens"]), int(c["overlap"]), str(c.get("starts", WORD_STARTS)))

    @property
    def faiss_type(self) -> str:
        return str(self.meta["faiss_index_type"])

    def row_of(self, chunk_id: str) -> int | None:
        return self._row_of.get(chunk_id)

    # ---- build ------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        chunks: list[Chunk],
        vectors: np.ndarray,
        *,
        embedder_name: str,
        dim: int,
        chunking: ChunkingParams,
        files: dict[str, FileEntry],
        root: str | None = None,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        progress: bool = False,
    ) -> HybridIndex:
        """Index `chunks` with their `vectors` ((n, dim) float32, unit rows, row i = chunks[i])."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(chunks), dim)
        faiss_index = _build_faiss(vectors, hnsw_threshold)
        bm25 = _build_bm25([c.text for c in chunks], progress) if chunks else None
        meta = {
            "format_version": FORMAT_VERSION,
            "embedder": {"name": embedder_name, "dim": int(dim)},
            "chunking": {
                "chunk_tokens": chunking.chunk_tokens,
                "overlap": chunking.overlap,
                "starts": chunking.starts,
            },
            "counts": {"chunks": len(chunks), "files": len(files)},
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "faiss_index_type": type(faiss_index).__name__,
            "hnsw": {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH},
            "hnsw_threshold": hnsw_threshold,
            "bm25": {"package": "bm25s", "stopwords": BM25_STOPWORDS, "lower": True},
            "root": root,
        }
        return cls(chunks, vectors, meta, dict(files), faiss_index, bm25)

    # ---- search -----------------------------------------------------------------------------------
    def dense_search(self, query_vector: np.ndarray, n: int) -> list[tuple[int, float]]:
        """Top-n rows by inner product with `query_vector` ((dim,) unit float32), best first."""
        if n < 1 or len(self) == 0:
            return []
        import faiss

        q = np.ascontiguousarray(query_vector, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.dim:
            raise IndexMismatchError(f"query vector has dim {q.shape[1]}, the index {self.dim}")
        faiss.omp_set_num_threads(SEARCH_THREADS)
        scores, rows = self._faiss.search(q, min(n, len(self)))
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]

    def bm25_search(self, query: str, n: int) -> list[tuple[int, float]]:
        """Top-n rows by BM25 score (> 0 only: a chunk sharing no query term is not a match)."""
        if n < 1 or self._bm25 is None:
            return []
        ids = _bm25_query_ids(self._bm25, query)
        if not ids:
            return []
        scores = self._bm25.get_scores_from_ids(ids)
        n = min(n, len(scores))
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(r), float(scores[r])) for r in top if scores[r] > 0]

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, index_dir: Path) -> None:
        """Write the index atomically to `index_dir` (replacing what was there).

        The caller holds `writer_lock(index_dir)` when other processes may write (ingest does).
        """
        index_dir = Path(index_dir)
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        _recover_interrupted_swap(index_dir)
        tmp = index_dir.with_name(f".{index_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            self._write_files(tmp)
            _fsync_tree(tmp)
            _swap_in(tmp, index_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = index_dir

    def _write_files(self, folder: Path) -> None:
        import faiss

        with open(folder / CHUNKS_FILE, "w", encoding="utf-8") as f:
            for c in self.chunks:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
        np.save(folder / VECTORS_FILE, np.asarray(self.vectors, dtype=np.float32))
        faiss.write_index(self._faiss, str(folder / FAISS_FILE))
        if self._bm25 is not None:
            self._bm25.save(str(folder / BM25_DIR), show_progress=False)
        files = {rel: e.to_dict() for rel, e in sorted(self.files.items())}
        (folder / FILES_FILE).write_text(json.dumps(files, indent=1), encoding="utf-8")
        # meta.json last: an index folder without it is never mistaken for a complete one.
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")

    @classmethod
    def open(cls, index_dir: Path, embedder: Any | None = None) -> HybridIndex:
        """Load an index; with `embedder`, refuse one built by another model (name or dim).

        Raises IndexMissingError (nothing ingested), IndexMismatchError (other embedder) or
        IndexCorruptError (unreadable or inconsistent files); each message says what to run.
        """
        index_dir = Path(index_dir)
        if not index_dir.exists() and index_dir.parent.exists():
            _await_or_recover_swap(index_dir)
        meta = _read_meta(index_dir)
        if embedder is not None:
            check_embedder(meta, embedder.name, int(embedder.dim), index_dir)
        chunks = _read_chunks(index_dir)
        n, dim = len(chunks), int(meta["embedder"]["dim"])
        if meta["counts"]["chunks"] != n:
            raise IndexCorruptError(index_dir, f"meta.json says {meta['counts']['chunks']} chunks, found {n}")
        vectors = _read_vectors(index_dir, n, dim)
        faiss_index = _read_faiss(index_dir, n, dim)
        bm25 = _read_bm25(index_dir, n)
        files = _read_files(index_dir, {c.chunk_id for c in chunks})
        index = cls(chunks, vectors, meta, files, faiss_index, bm25)
        index.path = index_dir
        return index


def check_embedder(meta: dict[str, Any], name: str, dim: int, index_dir: object) -> None:
    """Raise IndexMismatchError unless the index was built by an embedder with this name and dim."""
    built = meta["embedder"]
    if built["name"] != name or int(built["dim"]) != dim:
        raise IndexMismatchError(
            f"the index in {index_dir} was built with embedder {built['name']!r} (dim {built['dim']}), "
            f"but the configured embedder is {name!r} (dim {dim}); re-ingest your documents with "
            f"`ragqa ingest PATH --rebuild`, or configure the original embedder"
        )


# ---- FAISS / BM25 construction ---------------------------------------------------------------------
def _build_faiss(vectors: np.ndarray, hnsw_threshold: int) -> Any:
    import faiss

    n, dim = vectors.shape
    if n > hnsw_threshold:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    if n:
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        index.add(vectors)
        faiss.omp_set_num_threads(SEARCH_THREADS)
    return index


def _bm25_tokenize(texts: list[str], progress: bool = False) -> Any:
    import bm25s

    return bm25s.tokenize(texts, lower=True, stopwords=BM25_STOPWORDS, show_progress=progress)


def _build_bm25(texts: list[str], progress: bool) -> Any:
    import bm25s

    bm25 = bm25s.BM25()
    bm25.index(_bm25_tokenize(texts, progress), show_progress=progress)
    return bm25


def _bm25_query_ids(bm25: Any, query: str) -> list[int]:
    import bm25s

    tokens = bm25s.tokenize(
        [query], lower=True, stopwords=BM25_STOPWORDS, return_ids=False, show_progress=False
    )
    vocab = bm25.vocab_dict
    return [vocab[t] for t in tokens[0] if t and t in vocab]


def index_summary(index_dir: Path) -> dict[str, Any]:
    """What `ragqa doctor` says about the index, from meta.json and the files' presence (no vectors loaded): its
    size, embedder and chunking, or why it cannot be read. An index cut before chunk starts were recorded gets
    advice: its passages can open mid-sentence until its folder is ingested again."""
    out: dict[str, Any] = {"path": str(index_dir)}
    try:
        meta = _read_meta(index_dir)
        absent = [f for f in (CHUNKS_FILE, VECTORS_FILE, FAISS_FILE) if not (index_dir / f).is_file()]
        if absent:
            raise IndexCorruptError(index_dir, f"{', '.join(absent)} missing")
        chunking = {**meta["chunking"], "starts": str(meta["chunking"].get("starts", WORD_STARTS))}
        out.update(
            state="ok",
            files=int(meta["counts"].get("files") or 0),
            chunks=int(meta["counts"]["chunks"]),
            embedder=str(meta["embedder"]["name"]),
            chunking=chunking,
            root=meta.get("root"),
            created_at=meta.get("created_at"),
        )
    except IndexMissingError:
        return {**out, "state": "missing", "advice": "run `ragqa ingest PATH`"}
    except IndexCorruptError as e:
        return {**out, "state": "damaged", "error": str(e)}
    # An unreadable folder or odd values in meta.json (a count that is not a number, chunking that is not a map).
    except (OSError, ValueError, TypeError, AttributeError) as e:
        return {**out, "state": "damaged", "error": f"{index_dir}: {type(e).__name__}: {e}"}
    if chunking["starts"] == WORD_STARTS:
        folder = out["root"] or "FOLDER"
        out["advice"] = (
            f"cut the older way (a passage may open mid-sentence): `ragqa ingest {folder}` re-chunks it"
        )
    return out


# ---- reading, each failure a clear error ---------------------------------------------------------------
def _read_meta(index_dir: Path) -> dict[str, Any]:
    path = index_dir / META_FILE
    if not path.exists():
        if not index_dir.exists() or not any(index_dir.iterdir()):
            raise IndexMissingError(index_dir)
        raise IndexCorruptError(index_dir, "meta.json is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        version = meta["format_version"]
        _ = (meta["embedder"]["name"], int(meta["embedder"]["dim"]), int(meta["counts"]["chunks"]))
        _ = (int(meta["chunking"]["chunk_tokens"]), int(meta["chunking"]["overlap"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexCorruptError(index_dir, f"meta.json unreadable: {type(e).__name__}: {e}") from None
    if version != FORMAT_VERSION:
        raise IndexCorruptError(index_dir, f"format version {version}, this program reads {FORMAT_VERSION}")
    return meta


def _read_chunks(index_dir: Path) -> list[Chunk]:
    try:
        with open(index_dir / CHUNKS_FILE, encoding="utf-8") as f:
            return [Chunk.from_dict(json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexCorruptError(index_dir, f"chunks.jsonl unreadable: {type(e).__name__}: {e}") from None


def _read_vectors(index_dir: Path, n: int, dim: int) -> np.ndarray:
    try:
        vectors = np.load(index_dir / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise IndexCorruptError(index_dir, f"vectors.npy unreadable: {type(e).__name__}: {e}") from None
    if vectors.shape != (n, dim) or vectors.dtype != np.float32:
        raise IndexCorruptError(index_dir, f"vectors.npy has shape {vectors.shape}, expected {(n, dim)}")
    return vectors


def _read_faiss(index_dir: Path, n: int, dim: int) -> Any:
    import faiss

    path = index_dir / FAISS_FILE
    if not path.exists():
        raise IndexCorruptError(index_dir, "faiss.index is missing")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexCorruptError(index_dir, f"faiss.index unreadable: {str(e).splitlines()[0]}") from None
    if index.ntotal != n or index.d != dim:
        raise IndexCorruptError(index_dir, f"faiss.index holds {index.ntotal}x{index.d}, expected {n}x{dim}")
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _read_bm25(index_dir: Path, n: int) -> Any | None:
    import bm25s

    folder = index_dir / BM25_DIR
    if n == 0:
        return None
    if not folder.is_dir():
        raise IndexCorruptError(index_dir, "the bm25 folder is missing")
    try:
        bm25 = bm25s.BM25.load(str(folder), show_progress=False, verbosity=0)
    except Exception as e:  # bm25s raises OSError, ValueError, JSONDecodeError, KeyError...
        raise IndexCorruptError(index_dir, f"bm25 index unreadable: {type(e).__name__}: {e}") from None
    num_docs = int(bm25.scores.get("num_docs", -1))
    if num_docs != n:
        raise IndexCorruptError(index_dir, f"bm25 index covers {num_docs} chunks, expected {n}")
    data, indices, indptr = bm25.scores["data"], bm25.scores["indices"], bm25.scores["indptr"]
    if len(data) != len(indices) or int(indptr[-1]) != len(data) or (len(indices) and indices.max() >= n):
        raise IndexCorruptError(index_dir, "bm25 score matrix is inconsistent")
    return bm25


def _read_files(index_dir: Path, chunk_ids: set[str]) -> dict[str, FileEntry]:
    try:
        raw = json.loads((index_dir / FILES_FILE).read_text(encoding="utf-8"))
        files = {str(rel): FileEntry.from_dict(d) for rel, d in raw.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise IndexCorruptError(index_dir, f"files.json unreadable: {type(e).__name__}: {e}") from None
    listed = {cid for e in files.values() for cid in e.chunk_ids}
    if listed != chunk_ids:
        raise IndexCorruptError(index_dir, "files.json and chunks.jsonl list different chunks")
    return files


# ---- atomic replacement ------------------------------------------------------------------------------
def _fsync_tree(folder: Path) -> None:
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _old_copies(index_dir: Path) -> list[Path]:
    return sorted(index_dir.parent.glob(f".{index_dir.name}.old-*"))


def _swap_in(new_dir: Path, index_dir: Path) -> None:
    """Replace `index_dir` by `new_dir`: rename the old one aside, rename the new one in, drop the old."""
    old = index_dir.with_name(f".{index_dir.name}.old-{uuid.uuid4().hex[:8]}")
    if index_dir.exists():
        os.rename(index_dir, old)
    os.rename(new_dir, index_dir)
    _fsync_dir(index_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def writer_lock(index_dir: Path, blocking: bool = True) -> Iterator[bool]:
    """Exclusive lock of one index's writers (ingest), released when the process dies.

    Yields whether the lock is held (always True when blocking). Two writers at once would lose each
    other's files; readers never need it except to repair an interrupted swap.
    """
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir.with_name(f".{index_dir.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _await_or_recover_swap(index_dir: Path) -> None:
    """Reader side: the folder is missing but a set-aside copy exists. Either a writer is between its
    two renames (wait for it), or one died there (put the old copy back, holding the writer lock)."""
    deadline = time.monotonic() + 5.0
    while not index_dir.exists() and _old_copies(index_dir) and time.monotonic() < deadline:
        with writer_lock(index_dir, blocking=False) as held:
            if held:
                _recover_interrupted_swap(index_dir)
                return
        time.sleep(0.02)


def _recover_interrupted_swap(index_dir: Path) -> None:
    """After a crash between the two renames of `_swap_in`, put the old index back in place.
    Only call with the writer lock held."""
    if index_dir.exists() or not index_dir.parent.exists():
        return
    old = [p for p in _old_copies(index_dir) if (p / META_FILE).exists()]
    if old:
        newest = max(old, key=lambda p: p.stat().st_mtime)
        os.rename(newest, index_dir)


def remove_stale_copies(index_dir: Path) -> None:
    """Delete temp and set-aside copies left by a killed writer. Call only while holding the ingest
    lock (another writer's temp folder would be deleted under it otherwise)."""
    index_dir = Path(index_dir)
    _recover_interrupted_swap(index_dir)
    if not index_dir.parent.exists():
        return
    for stale in [*index_dir.parent.glob(f".{index_dir.name}.tmp-*"), *_old_copies(index_dir)]:
        if index_dir.exists():
            shutil.rmtree(stale, ignore_errors=True)


__all__ = ["HybridIndex", "FileEntry", "check_embedder", "REBUILD_HINT"]
