"""Find and read the user's documents: a walk that never crashes and text extraction per file type.

Reading is split in two steps so incremental ingest stays cheap: `read_bytes` (size limit, sha256) runs
for every file, `extract_text` (decode, HTML/PDF parsing) only for files whose hash changed. Any
problem with one file becomes `DocumentSkipped(reason)`; ingest reports it and carries on.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import DocumentSkipped

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
PDF_SUFFIXES = frozenset({".pdf"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES

DEFAULT_MAX_FILE_BYTES = 50 * 1024 * 1024

# Elements whose text is code or layout, not content.
_HTML_DROP = ("script", "style", "noscript", "template", "svg", "head")


@dataclass(frozen=True)
class FoundFile:
    """A file found by the walk: `relpath` is POSIX-style and relative to the ingested root."""

    path: Path
    relpath: str


@dataclass(frozen=True)
class RawDocument:
    """A document's bytes as read once: `sha256` decides whether it changed since the last ingest."""

    relpath: str
    data: bytes
    sha256: str
    size: int
    mtime: float


HIDDEN = "hidden (name starts with '.')"
OUTSIDE = "symlink pointing outside the ingested folder"
PRIVATE = "inside RAGQA_HOME (the app's own state: logins, feedback, models)"


def walk_files(
    root: Path, exclude: tuple[Path, ...] = (), private: tuple[Path, ...] = ()
) -> Iterator[tuple[FoundFile | None, tuple[str, str] | None]]:
    """Yield every file below `root` as `(FoundFile, None)`, or `(None, (relpath, reason))` for a skip.

    Never leaves `root`: a symlink whose target is outside it is skipped (a link to /etc/passwd or to the app's
    users file must not be indexed and shown as a source). Symlinks within it are followed, but no folder is
    entered twice (a symlink loop is reported as skipped). Hidden entries (name starting with ".") and the
    folders in `private` (the app's state) are skipped and listed; the folders in `exclude` (the index itself)
    are left out silently. Order is deterministic: in each folder its own files by name (symlinks last), then
    its subfolders.
    """
    root = Path(root)
    excluded = {_real(p) for p in exclude}
    # The index's lock and temporary copies sit beside it (".index.lock", ".index.tmp-*"): left out silently too.
    litter = {(os.path.dirname(p), f".{os.path.basename(p)}.") for p in excluded}
    private_dirs = tuple(_real(p) for p in private)
    top = _real(root)
    seen_dirs: set[tuple[int, int]] = set()
    try:
        st = root.stat()
        seen_dirs.add((st.st_dev, st.st_ino))
    except OSError as e:
        yield None, (".", f"cannot read folder: {e.strerror or e}")
        return
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            # Real entries before symlinks, so a folder reached both ways is ingested under its own name.
            entries = sorted(os.scandir(folder), key=lambda e: (e.is_symlink(), e.name))
        except OSError as e:
            yield None, (prefix or ".", f"cannot read folder: {e.strerror or e}")
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            rel = f"{prefix}{entry.name}"
            if entry.name.startswith("."):
                here = _real(folder)
                if not any(here == d and entry.name.startswith(pre) for d, pre in litter):
                    yield None, (rel, HIDDEN)
                continue
            try:
                st = os.stat(entry.path)  # follows symlinks; ELOOP for a symlink cycle
            except OSError as e:
                yield None, (rel, _stat_problem(entry, e))
                continue
            real = _real(Path(entry.path)) if entry.is_symlink() or stat.S_ISDIR(st.st_mode) else None
            if real is not None and entry.is_symlink() and not _within(real, top):
                yield None, (rel, OUTSIDE)
                continue
            if real is not None and any(_within(real, p) for p in private_dirs):
                yield None, (rel, PRIVATE)
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    if entry.is_symlink():
                        yield None, (rel, _revisit_reason(folder, entry))
                    continue
                seen_dirs.add(key)
                if real in excluded:
                    continue
                subdirs.append((Path(entry.path), rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                yield FoundFile(Path(entry.path), rel), None
            else:
                yield None, (rel, "not a regular file")
        stack.extend(reversed(subdirs))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _revisit_reason(folder: Path, entry: os.DirEntry) -> str:
    target, here = _real(Path(entry.path)), _real(folder)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        return "symlink loop (points to a folder above it)"
    return "symlink to a folder already ingested"


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _stat_problem(entry: os.DirEntry, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if entry.is_symlink():
        return "broken symlink"
    if isinstance(e, FileNotFoundError):
        return "file vanished during ingest"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read: {e.strerror or e}"


def check_supported(relpath: str) -> None:
    """Raise DocumentSkipped("unsupported type ...") for extensions we do not read."""
    suffix = Path(relpath).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DocumentSkipped(f"unsupported type ({suffix or 'no extension'})")


def read_bytes(found: FoundFile, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> RawDocument:
    """Read one file whole (after a size check) and hash it. Raises DocumentSkipped, never OSError."""
    try:
        st = found.path.stat()
        if st.st_size > max_bytes:
            raise DocumentSkipped(f"too large ({_mb(st.st_size)} > limit {_mb(max_bytes)})")
        if st.st_size == 0:
            raise DocumentSkipped("empty file")
        with open(found.path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise DocumentSkipped("file vanished during ingest") from None
    except PermissionError:
        raise DocumentSkipped("permission denied") from None
    except IsADirectoryError:
        raise DocumentSkipped("not a regular file") from None
    except OSError as e:
        raise DocumentSkipped(f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:  # grew while we read it
        raise DocumentSkipped(f"too large (> limit {_mb(max_bytes)})")
    if not data:
        raise DocumentSkipped("empty file")
    return RawDocument(found.relpath, data, hashlib.sha256(data).hexdigest(), len(data), st.st_mtime)


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def extract_text(raw: RawDocument) -> str:
    """The document's text (what chunks are cut from). Raises DocumentSkipped with the reason."""
    suffix = Path(raw.relpath).suffix.lower()
    if suffix in PDF_SUFFIXES:
        text = _pdf_text(raw.data)
    elif suffix in HTML_SUFFIXES:
        text = _html_text(_decode(raw.data))
    elif suffix in TEXT_SUFFIXES:
        text = _decode(raw.data)
    else:
        raise DocumentSkipped(f"unsupported type ({suffix or 'no extension'})")
    # Extracted PDF/HTML text can carry NUL characters (e.g. from a font's broken mapping): they are not
    # text, and PostgreSQL cannot store a passage holding one.
    text = text.replace("\x00", "")
    if not text.strip():
        raise DocumentSkipped("no text" if suffix not in PDF_SUFFIXES else "PDF has no extractable text")
    return text


def _decode(data: bytes) -> str:
    """UTF-8 (BOM or not) only: other encodings are reported, not silently mangled."""
    # The whole file, not a prefix: a NUL anywhere reaches passages, and PostgreSQL refuses to store any.
    if b"\x00" in data:
        raise DocumentSkipped("binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")  # also accepts plain UTF-8; strips a BOM
    except UnicodeDecodeError as e:
        raise DocumentSkipped(f"not valid UTF-8 (byte {e.start}); re-save the file as UTF-8") from None


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(_HTML_DROP):
        tag.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    # Blank lines become paragraph breaks so chunking can cut there.
    out: list[str] = []
    for line in lines:
        if line:
            out.append(line)
        elif out and out[-1] != "":
            out.append("")
    return "\n".join(out).strip()


def _pdf_text(data: bytes) -> str:
    """Text of every page, pages separated by a blank line."""
    from pypdf import PdfReader

    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # broken PDFs log many warnings; we report one reason instead
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                reader.decrypt("")
            except Exception:
                raise DocumentSkipped("encrypted PDF") from None
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except DocumentSkipped:
        raise
    except Exception as e:  # pypdf raises many types (PdfReadError, ValueError, KeyError, ...)
        raise DocumentSkipped(f"PDF could not be parsed ({type(e).__name__}: {e})") from None
    finally:
        pypdf_log.setLevel(level)
    return "\n\n".join(p for p in pages if p)
