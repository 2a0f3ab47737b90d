"""Plain data types shared by ingest, search, the prompt, the app and the feedback store."""

from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from typing import Any


def source_label(name: str) -> str:
    """A document name safe to show and to put in a prompt: one line, no control, format or bidi characters.

    A file name can hold newlines (and forge a `[2] (source: payroll.md)` passage block in the prompt or the
    Sources panel) or bidi overrides (`U+202E`, showing `gpj.exe` as `exe.jpg`); whitespace runs become one space
    and control/format/private-use/unassigned characters are dropped.
    """
    kept = []
    for ch in name:
        category = unicodedata.category(ch)
        if ch.isspace() or category in ("Zl", "Zp"):
            kept.append(" ")
        elif category[0] != "C":  # Cc control, Cf format (bidi, zero-width), Co private, Cs surrogate, Cn
            kept.append(ch)
    return " ".join("".join(kept).split())


@dataclass(frozen=True)
class Chunk:
    """A piece of one document as stored in the index.

    `chunk_id` is stable across re-ingests of the same content: it is derived from the document's
    relative path, its content hash and the chunk's position, so unchanged files keep their ids.
    """

    chunk_id: str
    source: str  # path relative to the ingested root, e.g. "guide/publish.md"
    text: str
    position: int  # 0-based index of the chunk within its document
    doc_hash: str  # sha256 of the document's bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Chunk:
        return cls(**{k: d[k] for k in ("chunk_id", "source", "text", "position", "doc_hash")})


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk as shown to the model and the user: `rank` is the [n] the answer cites."""

    rank: int  # 1-based; the prompt labels this passage [rank]
    chunk_id: str
    source: str
    text: str
    score: float  # fused retrieval score (higher is better)

    def __post_init__(self) -> None:
        # What the prompt and the Sources panel show: one line, no control or bidi characters (see source_label).
        object.__setattr__(self, "source", source_label(self.source))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Passage:
        return cls(
            rank=int(d["rank"]),
            chunk_id=str(d["chunk_id"]),
            source=str(d["source"]),
            text=str(d["text"]),
            score=float(d.get("score", 0.0)),
        )
