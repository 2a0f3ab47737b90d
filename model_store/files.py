"""Durable file writes for the registry and the GGUF converter: fsync before a rename is trusted, and hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_tree(root: Path) -> None:
    # A rename is only durable after the data it points at is on disk.
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, fsync it, and rename it over `path` (readers see old or new)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def link_or_copy(src: str, dst: str) -> None:
    """A hard link where src and dst share a file system, else a copy: for shutil.copytree's copy_function over
    immutable files (published versions, an index), which links make free."""
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)
