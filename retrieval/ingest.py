"""Ingest a folder (or one file) of documents into the hybrid index, incrementally by content hash.

What the index holds afterwards:
  - a folder: the index mirrors that folder. Sources are keyed by their path relative to the folder
    given; a file whose bytes (sha256) are unchanged keeps its chunks and stored vectors (no
    re-embedding), a changed file is re-chunked and re-embedded, and a file of the manifest that is
    not found under the folder is removed. Ingesting a *different* folder than last time is allowed:
    files at the same relative path with the same bytes are kept, everything else of the old folder
    is removed (the index then mirrors the new folder).
  - a single file: it is added or updated under its file name; the other indexed files are kept.
  - `rebuild=True`: every file is re-read, re-chunked and re-embedded; use it after changing the
    embedder (opening an index built by another embedder raises IndexMismatchError otherwise).
A change of chunking parameters re-chunks every file. Unreadable, unsupported or oversized files
are skipped and listed with a reason in the report; ingest never stops on one bad file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from retrieval.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, ChunkingParams, chunk_document
from retrieval.documents import (
    DEFAULT_MAX_FILE_BYTES,
    FoundFile,
    check_supported,
    extract_text,
    read_bytes,
    walk_files,
)
from retrieval.embedder import Embedder
from retrieval.errors import DocumentSkipped, IndexMissingError, IngestError, InvalidConfigError
from retrieval.index import DEFAULT_HNSW_THRESHOLD, FileEntry, HybridIndex, remove_stale_copies, writer_lock
from retrieval.types import Chunk


@dataclass
class IngestReport:
    """What one ingest did. Counts are files unless named chunks_*."""

    files_seen: int = 0  # every file found, supported or not
    indexed: int = 0  # new files
    updated: int = 0  # changed files (or all, after a chunking change)
    unchanged: int = 0
    removed: int = 0
    chunks_total: int = 0
    chunks_added: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relpath, reason)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{self.files_seen} files seen: {self.indexed} new, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.removed} removed, {len(self.skipped)} skipped; "
            f"{self.chunks_total} chunks in the index ({self.chunks_added} added) in {self.seconds:.1f} s"
        ]
        lines += [f"  skipped {rel}: {reason}" for rel, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class _Plan:
    """Chunks and vectors of the next index, built up file by file."""

    kept_chunks: list[Chunk] = field(default_factory=list)
    kept_rows: list[int] = field(default_factory=list)  # rows in the old index, aligned with kept_chunks
    new_chunks: list[Chunk] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)


def ingest(
    root: Path,
    index_dir: Path,
    embedder: Embedder,
    *,
    rebuild: bool = False,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
    progress: bool = True,
    private: tuple[Path, ...] | None = None,
) -> IngestReport:
    """Bring the index at `index_dir` up to date with the documents at `root` (see the module doc).

    Nothing outside `root` is read (symlinks leading out are skipped and listed), nor anything in `private`
    (default: RAGQA_HOME, the app's own state with its users file and feedback). Raises IngestError if `root`
    does not exist or is inside `private`, IndexMismatchError if the existing index was built by
    another embedder (unless `rebuild`), IndexCorruptError if it is damaged (unless `rebuild`).
    The index on disk is replaced atomically at the end, or left untouched if nothing changed.
    """
    t0 = time.perf_counter()
    root, index_dir = Path(root).expanduser(), Path(index_dir).expanduser()
    if not root.exists():
        raise IngestError(f"{root} does not exist: give a folder or a file of documents")
    private = (state_root(),) if private is None else private
    for folder in private:
        if _inside(root, folder):
            raise IngestError(
                f"{root} is inside {folder}, the app's own state (logins, feedback, models): "
                "ingest documents from a folder outside it"
            )
    params = ChunkingParams(chunk_tokens, overlap).validated(embedder.max_tokens)
    report = IngestReport()
    with writer_lock(index_dir):
        remove_stale_copies(index_dir)
        old = None if rebuild else _open_existing(index_dir, embedder)
        single_file = root.is_file()
        if single_file and old is not None:
            # how chunks start is the program's choice, not a setting: one file added to an index cut the old
            # way is cut the same way (ingesting the folder re-chunks them all)
            params = replace(params, starts=old.chunking.starts)
        same_chunking = old is not None and old.chunking == params
        plan = _Plan()
        if single_file and old is not None:
            if not same_chunking:
                raise InvalidConfigError(
                    f"the index was chunked with {old.chunking}, not {params}: ingest the whole folder "
                    "to re-chunk every file (a single file cannot change the settings for the others)"
                )
            _keep_all_files(plan, old)
        for found in _documents(root, index_dir, report, private):
            _plan_file(
                found, old if same_chunking else None, old, plan, report, params, embedder, max_file_bytes
            )
        if old is not None:
            report.removed = len(set(old.files) - set(plan.files))
        changed = rebuild or old is None or report.removed or plan.new_chunks or not same_chunking
        if changed:
            new_vectors = _embed(plan.new_chunks, embedder, progress)
            kept_vectors = _kept_vectors(old, plan.kept_rows, embedder.dim)
            index = HybridIndex.build(
                plan.kept_chunks + plan.new_chunks,
                np.concatenate([kept_vectors, new_vectors]),
                embedder_name=embedder.name,
                dim=embedder.dim,
                chunking=params,
                files=plan.files,
                root=str(root.resolve()),
                hnsw_threshold=hnsw_threshold,
            )
            index.save(index_dir)
        report.chunks_total = len(plan.kept_chunks) + len(plan.new_chunks)
        report.chunks_added = len(plan.new_chunks)
    report.seconds = time.perf_counter() - t0
    return report


def _open_existing(index_dir: Path, embedder: Embedder) -> HybridIndex | None:
    try:
        return HybridIndex.open(index_dir, embedder)
    except IndexMissingError:
        return None


def state_root() -> Path:
    """RAGQA_HOME as the app resolves it (default ./var): never ingested."""
    from settings.paths import ragqa_home

    return ragqa_home()


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


def _documents(
    root: Path, index_dir: Path, report: IngestReport, private: tuple[Path, ...]
) -> Iterator[FoundFile]:
    """Supported files under `root` (or `root` itself); skips go to the report."""
    if root.is_file():
        candidates = iter([(FoundFile(root, root.name), None)])
    else:
        candidates = walk_files(root, exclude=(index_dir,), private=private)
    for found, skip in candidates:
        report.files_seen += 1
        if skip is not None:
            report.skipped.append(skip)
            continue
        try:
            check_supported(found.relpath)
        except DocumentSkipped as e:
            report.skipped.append((found.relpath, e.reason))
            continue
        yield found


def _keep_all_files(plan: _Plan, old: HybridIndex) -> None:
    """Single-file ingest: start from every indexed file; `_plan_file` then replaces the one given."""
    for rel, entry in old.files.items():
        _keep(plan, old, rel, entry)


def _keep(plan: _Plan, old: HybridIndex, rel: str, entry: FileEntry) -> None:
    if rel in plan.files:
        _drop(plan, rel)
    rows = [old.row_of(cid) for cid in entry.chunk_ids]
    plan.kept_chunks.extend(old.chunks[r] for r in rows)
    plan.kept_rows.extend(rows)
    plan.files[rel] = entry


def _drop(plan: _Plan, rel: str) -> None:
    keep = [i for i, c in enumerate(plan.kept_chunks) if c.source != rel]
    plan.kept_chunks = [plan.kept_chunks[i] for i in keep]
    plan.kept_rows = [plan.kept_rows[i] for i in keep]
    del plan.files[rel]


def _plan_file(
    found: FoundFile,
    reusable: HybridIndex | None,
    old: HybridIndex | None,
    plan: _Plan,
    report: IngestReport,
    params: ChunkingParams,
    embedder: Embedder,
    max_file_bytes: int,
) -> None:
    """Keep, re-chunk or skip one file; updates `plan` and `report`."""
    try:
        raw = read_bytes(found, max_file_bytes)
        previous = old.files.get(found.relpath) if old is not None else None
        if (
            reusable is not None
            and previous is not None
            and previous.sha256 == raw.sha256
            and not _holds_nul(reusable, previous)
        ):
            _keep(
                plan, reusable, found.relpath, FileEntry(raw.sha256, raw.size, raw.mtime, previous.chunk_ids)
            )
            report.unchanged += 1
            return
        text = extract_text(raw)
        chunks = chunk_document(found.relpath, text, raw.sha256, embedder.tokenize_offsets, params)
        if not chunks:
            raise DocumentSkipped("no text")
    except DocumentSkipped as e:
        report.skipped.append((found.relpath, e.reason))
        if found.relpath in plan.files:  # single-file ingest of a file that became unreadable
            _drop(plan, found.relpath)
        return
    if found.relpath in plan.files:
        _drop(plan, found.relpath)
    plan.new_chunks.extend(chunks)
    plan.files[found.relpath] = FileEntry(raw.sha256, raw.size, raw.mtime, tuple(c.chunk_id for c in chunks))
    if previous is None:
        report.indexed += 1
    else:
        report.updated += 1


def _holds_nul(index: HybridIndex, entry: FileEntry) -> bool:
    """Chunks indexed before NULs were checked in the whole file: re-read the file (it is then skipped), since a
    passage holding a NUL cannot be stored with feedback on PostgreSQL."""
    return any("\x00" in index.chunks[index.row_of(cid)].text for cid in entry.chunk_ids)


def _embed(chunks: list[Chunk], embedder: Embedder, progress: bool) -> np.ndarray:
    """(len(chunks), dim) float32 unit vectors of the new chunks (no model call when there are none)."""
    if not chunks:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.asarray(embedder.encode([c.text for c in chunks], progress=progress), dtype=np.float32)


def _kept_vectors(old: HybridIndex | None, rows: list[int], dim: int) -> np.ndarray:
    """(len(rows), dim) float32 copied out of the old index's stored vectors."""
    if old is None or not rows:
        return np.zeros((0, dim), dtype=np.float32)
    return np.asarray(old.vectors[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
