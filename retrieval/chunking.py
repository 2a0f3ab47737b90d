"""Cut a document into overlapping token windows whose text is the document's own characters.

Windows are counted in the embedder's tokens (so a chunk never exceeds what the model reads) but a
chunk's text is the original span `text[start_of_first_token:end_of_last_token]`, taken through the
tokenizer's offset mapping: the user sees their document, not detokenised word pieces. When a window
is near its limit we end it at a paragraph break, else at a sentence end, if one lies in the last
quarter of the window; the next window starts at a sentence (or paragraph, list item, heading, table row)
near where its overlap begins, so no passage opens mid-sentence.
"""

from __future__ import annotations

import hashlib
import re
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
_SENTENCE_STOP = ".!?\u3002"  # a new sentence starts after these (after ";" or ":" the sentence goes on)
# Where a sentence starts after a line break: a blank line, or a new line that opens a list item, a heading, a
# quote, a table row or a numbered step. A lone newline inside a paragraph is only the author's line wrap.
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_LINE_MARK = re.compile(r"[-*+#>|]|\d+[.)]", re.ASCII)
# How the next window's start is chosen, stored with the index: a change re-chunks every file on the next ingest.
# "word" (the first chunker): the first whole word of the overlap. "sentence": a sentence start near it. Why: a
# passage that opens mid-sentence ("models rollback VERSION` switches back ...", without its "`ragqa") shows the
# user a fragment in Sources and hands the model a sentence without its subject.
WORD_STARTS = "word"
SENTENCE_STARTS = "sentence"

TokenizeOffsets = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class ChunkingParams:
    """Stored in meta.json: a change re-chunks every file on the next ingest."""

    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: int = DEFAULT_OVERLAP
    starts: str = SENTENCE_STARTS  # an index written before this setting existed reads as WORD_STARTS

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
        if self.starts not in (WORD_STARTS, SENTENCE_STARTS):
            raise InvalidConfigError(
                f"chunk starts must be {WORD_STARTS!r} or {SENTENCE_STARTS!r}, got {self.starts!r}"
            )
        return ChunkingParams(size, self.overlap, self.starts)


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
    text: str,
    spans: list[tuple[int, int]],
    chunk_tokens: int,
    overlap: int,
    starts: str = SENTENCE_STARTS,
) -> list[tuple[int, int]]:
    """Token index windows [i, j) covering all tokens, each <= chunk_tokens, consecutive ones sharing about
    `overlap` tokens (boundary snapping moves the end earlier and the start to a sentence or word start)."""
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
        nominal = max(j - overlap, i + 1)
        if starts == SENTENCE_STARTS:
            i = _sentence_start(text, spans, nominal, lo=max(i + 1, nominal - overlap // 2), hi=j)
        else:
            i = _snap_start(text, spans, nominal, j)
    return windows


def _starts_sentence(text: str, spans: list[tuple[int, int]], t: int) -> bool:
    """Whether token t opens a sentence: the text's first token, one after a sentence end and a space, one after
    a blank line, or the first of a line that is a list item, heading, quote, table row or numbered step."""
    if t == 0:
        return True
    start = spans[t][0]
    space = text[spans[t - 1][1] : start]
    if not space:
        return False  # inside a word, or punctuation glued to one
    if "\n" in space and (_BLANK_LINE.search(space) or _LINE_MARK.match(text, start, spans[t][1] + 2)):
        return True
    return text[spans[t - 1][1] - 1] in _SENTENCE_STOP


def _sentence_start(text: str, spans: list[tuple[int, int]], nominal: int, lo: int, hi: int) -> int:
    """The next window's start: the latest sentence start in [lo, nominal] (a little more overlap keeps the
    sentence whole), else the first one in (nominal, hi] (less overlap: at hi none, the previous window ended
    there), else the first word start after `nominal` as before."""
    for t in range(nominal, lo - 1, -1):
        if _starts_sentence(text, spans, t):
            return t
    for t in range(nominal + 1, min(hi, len(spans) - 1) + 1):
        if _starts_sentence(text, spans, t):
            return t
    return _snap_start(text, spans, nominal, hi)


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
    windows = window_bounds(text, spans, params.chunk_tokens, params.overlap, params.starts)
    for position, (i, j) in enumerate(windows):
        chunk_text = text[spans[i][0] : spans[j - 1][1]]
        chunks.append(Chunk(chunk_id(relpath, doc_hash, position), relpath, chunk_text, position, doc_hash))
    return chunks
