"""Fixtures for retrieval tests: the hashed fake embedder and a small document folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.embedder import HashEmbedder

DOCS = {
    "volcano.md": "# Mount Brellin\n\nMount Brellin is a dormant volcano. It last erupted in 1743 and is 2,310 metres high.",
    "guide/tea.txt": "Kettle tea ceremony notes.\n\nThe Orvane tea ceremony uses three cups of green tea.",
    "guide/ferry.rst": "Ferry schedule\n==============\n\nThe ferry to Lutz Island leaves at 7:15 every morning.",
}


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder(dim=64)


def _write_docs(root: Path, docs: dict[str, str | bytes]) -> Path:
    """Write {relpath: text or bytes} under root; returns root."""
    for rel, content in docs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def write_docs():
    """The function `write_docs(root, {relpath: text or bytes}) -> root`."""
    return _write_docs


@pytest.fixture
def docs_root(tmp_path: Path) -> Path:
    return _write_docs(tmp_path / "docs", DOCS)


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "home" / "index"
