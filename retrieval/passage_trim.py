"""Fit k passages into a prompt-token budget by keeping their sentences that bear on the question.

Why: on a CPU the first token waits for the whole prompt's prefill, and prefill is compute-bound there (llama.cpp
on a 2-core AVX2-only EPYC prefills ~410-490 tokens/s with SmolLM2-135M), so 4 passages of ~200 tokens (an
~880-token prompt) take 1.6-2.2 s before the first token. Dropping whole passages (`fit_passages`) loses the
answers that rank 3rd or 4th; this keeps at least the best sentence of every passage that fits, then the
best-ranked passages whole where they fit, and fills the rest of the budget with the sentences that share the
most (rare) question words, in each passage's own order, with "…" where text was left out. The trimmed passage is what the model reads, what the Sources panel shows and what the
feedback store keeps, so training sees exactly what serving showed.

Scoring is lexical on purpose: an IDF-weighted overlap of question words (IDF over the sentences of the
passages at hand) costs microseconds, where embedding every sentence with the retrieval model would cost about
as much CPU time as the prefill it saves. Pure Python: no heavy imports.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from retrieval.prompt import passage_field, render_prompt

# Recorded beside every measurement of trimmed prompts (benchmarks/passages_k.py): results of one version are not
# evidence for another. v1: best sentence per passage, top passages whole again, fill by score. v2: the same, and
# GAP marks of an already trimmed passage are cuts (not sentences), CJK text split at its full stops.
TRIM_ALGORITHM = "v2"
GAP = "…"
# A "sentence" longer than this many words (a table row run, a code block, a list without full stops) is cut into
# pieces of PIECE_WORDS words, so one of them can still fit a small budget. Text without spaces counts by pieces
# of it: a CJK character is a word (Chinese and Japanese write no spaces; a character is about a token), a run of
# other characters counts a word per LONG_WORD_CHARS (a URL or a hash is many tokens).
MAX_SENTENCE_WORDS = 60
PIECE_WORDS = 40
LONG_WORD_CHARS = 12
# After this many sentences in a row that do not fit, the rest (ever lower-scored) are not tried: each try renders
# and tokenizes the whole prompt.
MAX_MISSES = 4

# Han, kana and CJK compatibility ideographs: scripts written without spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Where a sentence ends: a stop (kept with its sentence; a Latin one only before a space, "3.14" and "e.g.x" go
# on), or a break that is dropped: a paragraph, a list item or a table row. CJK stops need no space after them,
# may repeat ("！？", "。。。") and may be followed by closing quotes or brackets, which stay with the sentence.
_BREAK = re.compile(
    r"(?P<stop>[.!?]+[\"')\]]*(?=\s)|[。！？]+[」』）”’》】]*)"
    r"|\n\s*\n|\n(?=\s*(?:[-*+#>|]|\d+[.)])\s)"
)
_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]{{1,{LONG_WORD_CHARS}}}")
_CJK_RUN = re.compile(rf"[{_CJK}]+")
_WORD = re.compile(rf"[^\W{_CJK}]+", re.UNICODE)
# Function words carry no evidence of where the answer is (a sentence sharing "the" and "of" with the question is
# not more likely to answer it). A short list, because IDF already discounts common words.
_STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have how i if in into is it its
    me my no not of on or our so than that the their them then there these they this to was we were what when
    where which who whom whose why will with would you your""".split()
)


@dataclass(frozen=True)
class _Sentence:
    passage: int  # index in the passages given
    position: int  # index within its passage
    text: str
    score: float
    gap_before: bool = False  # the passage was already trimmed here (a GAP stood before this sentence)
    glued: bool = False  # no space between it and the sentence before (CJK text, a word cut in two)


def split_sentences(text: str) -> list[str]:
    """The sentences (or list items, paragraphs, pieces of over-long runs) of a passage, in order."""
    return [piece for piece, _ in _pieces(text)]


def _pieces(text: str) -> list[tuple[str, bool]]:
    """The sentences of a text, each with whether it is glued to the one before (no space between them in the
    text: CJK sentences, or two pieces of one over-long word), so joining them again restores the text."""
    out: list[tuple[str, bool]] = []
    start = 0
    for m in [*_BREAK.finditer(text), None]:
        end = len(text) if m is None else m.end() if m.group("stop") else m.start()
        glued = start > 0 and not text[start - 1].isspace() and not text[start : start + 1].isspace()
        out.extend(_cut_long(" ".join(text[start:end].split()), glued))
        start = end if m is None else m.end()
    return [(p, g) for p, g in out if p]


def _unit_starts(word: str) -> list[int]:
    """Where each counted unit of a word starts: a CJK character, or LONG_WORD_CHARS of any other run."""
    return [m.start() for m in _UNIT.finditer(word)]


def _cut_long(sentence: str, glued: bool) -> list[tuple[str, bool]]:
    """A sentence of at most MAX_SENTENCE_WORDS units as it is; a longer one packed into pieces of PIECE_WORDS
    units at its spaces; only a single word longer than that (CJK text, a URL) is cut inside, its pieces glued."""
    words = sentence.split(" ") if sentence else []
    sizes = [len(_unit_starts(w)) for w in words]
    if sum(sizes) <= MAX_SENTENCE_WORDS:
        return [(sentence, glued)]
    out: list[tuple[str, bool]] = []

    def add(piece: str, inside_word: bool) -> None:  # the first piece keeps the sentence's own glue
        out.append((piece, inside_word if out else glued))

    current: list[str] = []
    used = 0
    for word, size in zip(words, sizes, strict=True):
        if current and used + size > PIECE_WORDS:
            add(" ".join(current), False)
            current, used = [], 0
        if size > PIECE_WORDS:
            starts = _unit_starts(word)[::PIECE_WORDS]
            for a, b in zip(starts, [*starts[1:], len(word)], strict=True):
                add(word[a:b], a > 0)
            continue
        current.append(word)
        used += size
    if current:
        add(" ".join(current), False)
    return out


def _stem(word: str) -> str:
    # Enough to match "publish" with "published"/"publishes"/"publishing"; not a linguistic stemmer.
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def terms(text: str) -> set[str]:
    """The question-matching terms of a text: stemmed words less stop words, and for CJK text (no spaces to
    find words by) its character pairs, the usual unit of CJK keyword matching."""
    lower = text.lower()
    found = {_stem(w) for w in _WORD.findall(lower) if w not in _STOPWORDS}
    for run in _CJK_RUN.findall(lower):
        found.update(run[i : i + 2] for i in range(max(1, len(run) - 1)))
    return found


def score_sentences(question: str, sentences: Sequence[str]) -> list[float]:
    """IDF-weighted overlap of each sentence with the question's words (IDF over these sentences)."""
    asked = terms(question)
    bags = [terms(s) & asked for s in sentences]
    n = len(sentences)
    df = {t: sum(t in bag for bag in bags) for t in asked}
    idf = {t: math.log(1 + n / df[t]) for t in asked if df[t]}
    return [sum(idf[t] for t in bag) for bag in bags]


def _with_text(passage: Any, text: str) -> Any:
    if isinstance(passage, Mapping):
        return {**passage, "text": text}
    return replace(passage, text=text)


@dataclass(frozen=True)
class _Marked:
    text: str
    gap_before: bool  # a GAP stood before it: text was left out there by an earlier trim
    glued: bool  # no space between it and the sentence before


def _marked(text: str) -> tuple[list[_Marked], bool]:
    """A passage's sentences, and whether text was left out after the last.

    A passage trimmed before (a smaller budget now, or a stored one shown again) carries GAP marks: they are
    breaks, not sentences, so trimming it again neither keeps a bare GAP nor loses where text was left out."""
    out: list[_Marked] = []
    gap = False
    for piece, glued in _pieces(text):
        # a mark stands alone between spaces (as _joined writes it); "and so on…" ends a sentence, not a cut
        words = piece.split(" ")
        while words and words[0] == GAP:
            words.pop(0)
            gap = True
        trailing = False
        while words and words[-1] == GAP:
            words.pop()
            trailing = True
        if words:
            out.append(_Marked(" ".join(words), gap, glued and not gap))
            gap = False
        gap = gap or trailing
    return out, gap


def _joined(sentences: list[_Sentence], total: int, gap_after: bool) -> str:
    """The kept sentences of one passage in order, with one GAP wherever text was left out (now or before);
    sentences that were glued in the text (CJK, a word cut in two) are glued again."""
    text = ""
    last = -1
    for s in sentences:
        if s.position != last + 1 or s.gap_before:
            text = f"{text} {GAP} " if text else f"{GAP} "
        elif text and not s.glued:
            text += " "
        text += s.text
        last = s.position
    if last != total - 1 or gap_after:
        text += f" {GAP}"
    return text


def _render_kept(
    passages: Sequence[Any], units: list[list[_Sentence]], gaps_after: list[bool], kept: list[set[int]]
) -> list[Any]:
    """The first len(kept) passages, each with its kept sentences (all of them: the passage as it was)."""
    out = []
    for i, positions in enumerate(kept):
        if len(positions) == len(units[i]):
            out.append(passages[i])
        else:
            chosen = [s for s in units[i] if s.position in positions]
            out.append(_with_text(passages[i], _joined(chosen, len(units[i]), gaps_after[i])))
    return out


def _rest_by_priority(
    units: list[list[_Sentence]], best: list[_Sentence | None], kept: list[set[int]]
) -> list[_Sentence]:
    """The kept passages' sentences not kept yet: by score, then rank, then closeness to the best sentence of
    their passage (the neighbours of the evidence explain its pronouns), then position."""
    rest = [s for i, positions in enumerate(kept) for s in units[i] if s.position not in positions]

    def key(s: _Sentence) -> tuple[float, int, int, int]:
        anchor = best[s.passage]
        return (-s.score, s.passage, abs(s.position - anchor.position) if anchor else 0, s.position)

    return sorted(rest, key=key)


def _units(question: str, passages: Sequence[Any]) -> tuple[list[list[_Sentence]], list[bool]]:
    """Each passage's scored sentences, and whether it ends where text was left out before."""
    marked = [_marked(str(passage_field(p, "text"))) for p in passages]
    scores = iter(score_sentences(question, [m.text for sentences, _ in marked for m in sentences]))
    units = [
        [_Sentence(i, j, m.text, next(scores), m.gap_before, m.glued) for j, m in enumerate(sentences)]
        for i, (sentences, _) in enumerate(marked)
    ]
    return units, [gap_after for _, gap_after in marked]


def trim_passages(
    question: str,
    passages: Sequence[Any],
    history: Sequence[Mapping[str, str]],
    count_tokens: Callable[[list[dict[str, str]]], int],
    budget: int,
) -> list[Any]:
    """The passages, trimmed to their question-relevant sentences so the rendered prompt fits `budget` tokens.

    Unchanged when they already fit. Otherwise every passage keeps at least its best sentence, in rank order (one
    whose best sentence no longer fits is dropped with every lower-ranked one, so the citation numbers [1]..[n]
    keep their order); then the best-ranked passages are made whole again where they fit (a model reads whole
    passages best: it was trained on them); the budget left takes the best-scoring other sentences of the
    passages still trimmed. Trimming trimmed passages again with the same budget
    changes nothing; with a smaller one it trims them further, keeping one GAP wherever text was left out. `count_tokens` measures rendered messages with the serving model's own chat template.
    May return [] (not even one sentence fits).
    """
    passages = list(passages)
    if not passages or count_tokens(render_prompt(question, passages, history)) <= budget:
        return passages

    def fits(kept: list[set[int]]) -> bool:
        rendered = _render_kept(passages, units, gaps_after, kept)
        return count_tokens(render_prompt(question, rendered, history)) <= budget

    units, gaps_after = _units(question, passages)
    best = [max(u, key=lambda s: (s.score, -s.position)) if u else None for u in units]
    kept: list[set[int]] = []
    for anchor in best:  # phase 1: the best sentence of each passage, in rank order, while they fit
        kept.append({anchor.position} if anchor else set())
        if not fits(kept):
            kept.pop()
            break
    for i in range(len(kept)):  # phase 2: whole passages, best-ranked first, where they fit
        trimmed = kept[i]
        kept[i] = {s.position for s in units[i]}
        if not fits(kept):
            kept[i] = trimmed
    misses = 0
    for sentence in _rest_by_priority(units, best, kept):  # phase 3: the rest, best first
        if misses >= MAX_MISSES:
            break
        kept[sentence.passage].add(sentence.position)
        if fits(kept):
            misses = 0
        else:
            kept[sentence.passage].discard(sentence.position)
            misses += 1
    return _render_kept(passages, units, gaps_after, kept)
