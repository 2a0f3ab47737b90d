"""Cut a document into overlapping token windows whose text is the document's own characters.

Windows are counted in the embedder's tokens (so a chunk never exceeds what the model reads) but a
chunk's text is the original span `text[start_of_first_token:end_of_last_token]`, taken through the
tokenizer's offset mapping: the user sees their document, not detokenised word pieces. When a window
is near its limit we end it at a paragraph break, else at a sentence end, if one lies in the last
quarter of the window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from retrieval.errors import InvalidConfigError
from retrieval.types import Chunk

DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP = 40

# Tokenise long documents in pieces of about this many characters (cut at whitespace), so a 50 MB
# file does not become one giant tokenizer call.
_SEGMENT_CHARS = 20_000
_SENTENCE_END = ".!?;:\u3002"

TokenizeOffsets = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class ChunkingParams:
    """Stored in meta.json: a change re-chunks every file on the next ingest."""

    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: int = DEFAULT_OVERLAP

    def validated(self, max_tokens: int) -> ChunkingParams:
        """Clamp chunk_tokens to the embedder's limit; reject impossible settings with a clear message."""
        if self.chunk_tokens < 1:
            raise InvalidConfigError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        if self.overlap < 0:
            raise InvalidConfigError(f"overlap must be >= 0, got {self.overlap}")
        size = min(self.chunk_tokens, max_tokens)
        if self.overlap >= size:
            raise InvalidConfigError(
                f"overlap ({self.overlap}) must be smaller than the chunk size ({size} tokens)"
            )
        return ChunkingParams(size, self.overlap)


def chunk_id(relpath: str, doc_hash: str, position: int) -> str:
    """Stable id: the same file content at the same path gives the same ids on every ingest."""
    return hashlib.sha256(f"{relpath}\0{doc_hash}\0{position}".encode()).hexdigest()[:16]


def token_spans(text: str, tokenize: TokenizeOffsets) -> list[tuple[int, int]]:
    """Offsets of every token of `text`, tokenising it in whitespace-aligned segments."""
    spans: list[tuple[int, int]] = []
    start = 0
    n = len(text)
    while start < n:
        end = min(start + _SEGMENT_CHARS, n)
        if end < n:
            cut = _last_space(text, start, end)
            end = cut if cut > start else end
        spans.extend((s + start, e + start) for s, e in tokenize(text[start:end]) if e > s)
        start = end
    return spans


def _last_space(text: str, start: int, end: int) -> int:
    for i in range(end, start, -1):
        if text[i - 1].isspace():
            return i
    return -1


def window_bounds(
    text: str, spans: list[tuple[int, int]], chunk_tokens: int, overlap: int
) -> list[tuple[int, int]]:
    """Token index windows [i, j) covering all tokens, each <= chunk_tokens, consecutive ones sharing
    `overlap` tokens (before boundary snapping moves the end earlier)."""
    windows: list[tuple[int, int]] = []
    n = len(spans)
    i = 0
    while i < n:
        j = min(i + chunk_tokens, n)
        if j < n:
            j = _snap_end(text, spans, i, j, chunk_tokens)
        windows.append((i, j))
        if j >= n:
            break
        i = _snap_start(text, spans, max(j - overlap, i + 1), j)
    return windows


def _snap_start(text: str, spans: list[tuple[int, int]], i: int, j: int) -> int:
    """Move an overlapping window's start forward to the first token that begins a word.

    Word-piece tokenizers split words ("ingest" -> "in", "##gest"); a chunk starting inside a word would show the
    user a fragment like "gest". Stays at `i` when no word start lies before the previous window's end `j`.
    """
    for t in range(i, j):
        start = spans[t][0]
        if start == 0 or text[start - 1].isspace():
            return t
    return i


def _snap_end(text: str, spans: list[tuple[int, int]], i: int, j: int, chunk_tokens: int) -> int:
    """Move the window end back to a paragraph break, else a sentence end, within its last quarter."""
    lo = max(i + 1, j - max(chunk_tokens // 4, 1))
    sentence_end = -1
    for t in range(j, lo - 1, -1):  # candidate end t: the window holds tokens [i, t)
        gap = text[spans[t - 1][1] : spans[t][0]]
        if "\n\n" in gap or "\n\r\n" in gap:
            return t
        if sentence_end < 0 and gap and text[spans[t - 1][1] - 1] in _SENTENCE_END:
            sentence_end = t
    return sentence_end if sentence_end > 0 else j


def chunk_document(
    relpath: str,
    text: str,
    doc_hash: str,
    tokenize: TokenizeOffsets,
    params: ChunkingParams = ChunkingParams(),
) -> list[Chunk]:
    """Chunks of one document in order; `params` must already be validated against the embedder."""
    spans = token_spans(text, tokenize)
    chunks = []
    for position, (i, j) in enumerate(window_bounds(text, spans, params.chunk_tokens, params.overlap)):
        chunk_text = text[spans[i][0] : spans[j - 1][1]]
        chunks.append(Chunk(chunk_id(relpath, doc_hash, position), relpath, chunk_text, position, doc_hash))
    return chunks
