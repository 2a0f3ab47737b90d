"""retrieval/passage_trim.py: passages cut to their question-relevant sentences so the prompt fits a budget."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.passage_trim import GAP, score_sentences, split_sentences, trim_passages
from retrieval.prompt import render_prompt
from retrieval.types import Passage

FILLER = [
    "The committee met on a Tuesday to discuss the annual budget.",
    "Several members arrived late because of the weather.",
    "Coffee and biscuits were served in the hall.",
    "The minutes of the previous meeting were read aloud.",
    "A short break followed the first session.",
]


def words(messages: list[dict[str, str]]) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return sum(len(m["content"].split()) for m in messages)


def passage(rank: int, source: str, *sentences: str) -> Passage:
    return Passage(rank, f"c{rank}", source, " ".join(sentences), 1.0 / rank)


PASSAGES = [
    passage(1, "tower.md", *FILLER[:3], "The Zorbium Tower opened on 14 March 1893.", *FILLER[3:]),
    passage(2, "bread.md", *FILLER, "Quillbread dough rests for nine hours."),
    passage(
        3,
        "ship.md",
        "The Marigold Vance was designed by Alma Pettersen, who also designed the tower.",
        *FILLER,
    ),
    passage(4, "bird.md", *FILLER[::-1]),
]
QUESTION = "When did the Zorbium Tower open?"


def test_split_sentences_by_stops_list_items_and_long_runs() -> None:
    assert split_sentences("One. Two? Three! Four") == ["One.", "Two?", "Three!", "Four"]
    assert split_sentences("Steps:\n- install it\n- run it\n\nNext part") == [
        "Steps:",
        "- install it",
        "- run it",
        "Next part",
    ]
    assert split_sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]
    run = " ".join(f"w{i}" for i in range(100))  # a code block or table without full stops
    assert [len(p.split()) for p in split_sentences(run)] == [40, 40, 20]


def test_rare_question_words_score_highest() -> None:
    scores = score_sentences(QUESTION, [FILLER[0], PASSAGES[0].text.split(". ")[3], "The tower is tall."])
    assert scores[0] == 0 and scores[1] > scores[2] > 0


def test_a_prompt_that_fits_is_left_alone() -> None:
    full = words(render_prompt(QUESTION, PASSAGES))
    assert trim_passages(QUESTION, PASSAGES, [], words, full) == PASSAGES


def test_trimmed_prompt_fits_keeps_every_passage_and_the_answer() -> None:
    full = words(render_prompt(QUESTION, PASSAGES))
    budget = full // 2
    out = trim_passages(QUESTION, PASSAGES, [], words, budget)
    assert words(render_prompt(QUESTION, out)) <= budget
    assert [(p.rank, p.source, p.chunk_id) for p in out] == [(p.rank, p.source, p.chunk_id) for p in PASSAGES]
    assert "The Zorbium Tower opened on 14 March 1893." in out[0].text
    assert out[0].text.startswith(GAP) and out[0].text != PASSAGES[0].text
    # Passage 3's best sentence (it shares "tower") is kept; filler that shares nothing goes first.
    assert "designed by Alma Pettersen" in out[2].text
    # Every kept piece is the original's text, in the original's order.
    for before, after in zip(PASSAGES, out, strict=True):
        pieces = [s for s in after.text.split(f" {GAP}") if s.strip(f" {GAP}")]
        positions = [before.text.find(s.strip(f" {GAP}")) for s in pieces]
        assert all(p >= 0 for p in positions) and positions == sorted(positions)


def test_trimming_twice_changes_nothing() -> None:
    budget = words(render_prompt(QUESTION, PASSAGES)) // 2
    once = trim_passages(QUESTION, PASSAGES, [], words, budget)
    assert trim_passages(QUESTION, once, [], words, budget) == once


def test_passages_whose_best_sentence_does_not_fit_are_dropped_from_the_lowest_rank() -> None:
    bare = words(render_prompt(QUESTION, PASSAGES[:2]))  # not even 2 whole passages' worth
    out = trim_passages(QUESTION, PASSAGES, [], words, bare // 2)
    assert 1 <= len(out) < len(PASSAGES)
    assert [p.rank for p in out] == list(range(1, len(out) + 1))  # a prefix: citations keep their numbers
    assert "1893" in out[0].text
    assert trim_passages(QUESTION, PASSAGES, [], words, 5) == []  # not one sentence fits


def test_dict_passages_from_the_feedback_store_are_trimmed_too() -> None:
    stored = [p.to_dict() for p in PASSAGES]
    out = trim_passages(QUESTION, stored, [], words, words(render_prompt(QUESTION, stored)) // 2)
    assert all(isinstance(p, dict) for p in out) and out[0]["chunk_id"] == "c1" and "1893" in out[0]["text"]


@settings(max_examples=120, deadline=None)
@given(
    question=st.text(min_size=1, max_size=60).filter(str.strip),
    texts=st.lists(st.text(max_size=400), min_size=1, max_size=5),
    budget=st.integers(min_value=0, max_value=400),
)
def test_any_passages_fit_or_are_empty(question: str, texts: list[str], budget: int) -> None:
    passages = [Passage(i + 1, f"c{i}", f"s{i}.md", t, 0.0) for i, t in enumerate(texts)]
    out = trim_passages(question, passages, [], words, budget)
    assert out == [] or words(render_prompt(question, out)) <= budget or out == passages
    assert [p.chunk_id for p in out] == [p.chunk_id for p in passages[: len(out)]]
    if out and out != passages:
        assert trim_passages(question, out, [], words, budget) == out


def test_best_ranked_passages_are_made_whole_where_they_fit() -> None:
    """Near the budget the top passages stay as written (the model was trained on whole passages) and only the
    lowest-ranked one loses sentences."""
    full = words(render_prompt(QUESTION, PASSAGES))
    out = trim_passages(QUESTION, PASSAGES, [], words, full - 12)
    assert [p.text for p in out[:3]] == [p.text for p in PASSAGES[:3]]
    assert GAP in out[3].text and len(out) == 4


def chars(messages: list[dict[str, str]]) -> int:
    """A stand-in tokenizer for text without spaces: one token per character."""
    return sum(len(m["content"]) for m in messages)


def test_cjk_text_is_split_at_its_full_stops_and_scored_by_character_pairs() -> None:
    assert split_sentences("東京は日本の首都です。人口は約千四百万人です！次。") == [
        "東京は日本の首都です。",
        "人口は約千四百万人です！",
        "次。",
    ]
    assert [len(p) for p in split_sentences("あ" * 130)] == [
        40,
        40,
        40,
        10,
    ]  # no stop at all: cut by characters
    # a long "word" (a URL, a hash) counts a word per 12 characters: 1,000 characters are 84 words, cut at 40
    assert [len(p) for p in split_sentences("x" * 1000)] == [480, 480, 40]
    scores = score_sentences(
        "東京の人口は？", ["東京は日本の首都です。", "人口は約千四百万人です。", "天気は晴れ。"]
    )
    assert scores[1] > 0 and scores[0] > 0 and scores[2] == 0


def test_cjk_passages_are_trimmed_not_dropped() -> None:
    """Before, a CJK passage was one unsplittable "sentence": over the budget every passage but none was lost."""
    filler = "会議は火曜日に開かれた。" * 6
    passages = [
        passage(1, "a.md", filler + "東京の人口は約千四百万人です。" + filler),
        passage(2, "b.md", filler + "大阪は商業の町です。"),
    ]
    question = "東京の人口は？"
    full = chars(render_prompt(question, passages))
    out = trim_passages(question, passages, [], chars, full - 120)
    assert len(out) == 2 and "千四百万人" in out[0].text and GAP in out[0].text
    assert chars(render_prompt(question, out)) <= full - 120


def test_trimming_again_at_a_smaller_budget_keeps_one_gap_per_cut() -> None:
    """A trimmed passage shown again (the candidates path, a stored passage) under a smaller budget: its GAP marks
    are cuts, never sentences of their own (the old code kept a bare one: "… 1893. … …" at 129 then 70 words),
    and a cut made before is still marked."""
    full = words(render_prompt(QUESTION, PASSAGES))
    original = set(" ".join(x.text for x in PASSAGES).split())
    for first in range(100, full, 7):
        once = trim_passages(QUESTION, PASSAGES, [], words, first)
        for second in range(40, first, 3):
            twice = trim_passages(QUESTION, once, [], words, second)
            assert trim_passages(QUESTION, twice, [], words, second) == twice  # stable at its budget
            assert not twice or words(render_prompt(QUESTION, twice)) <= second
            for before, after in zip(once, twice, strict=False):
                assert f"{GAP} {GAP}" not in after.text, (first, second, after.text)
                assert set(after.text.split()) - {GAP} <= original
                assert GAP in after.text or GAP not in before.text  # an earlier cut stays marked


def test_a_sentence_ending_in_an_ellipsis_is_not_a_cut() -> None:
    """A writer's "…" at the edge of a sentence is text, not a mark of an earlier cut: trimming again at a
    smaller budget keeps it where it was."""
    text = "So it went on…\n\nThe Zorbium Tower opened in 1893. " + " ".join(FILLER)
    p = [passage(1, "t.md", text), *PASSAGES[1:]]
    full = words(render_prompt(QUESTION, p))
    out = trim_passages(QUESTION, p, [], words, full // 2)
    smaller = trim_passages(QUESTION, out, [], words, full // 2 - 8)
    assert smaller != out
    for trimmed in (out, smaller):
        assert trimmed[0].text.startswith("So it went on… The Zorbium Tower opened in 1893."), trimmed[0].text
        assert trimmed[0].text.endswith(GAP) and trimmed[0].text.count(GAP) == 2  # the writer's and one cut


def _segments(text: str) -> list[str]:
    return [seg.strip() for seg in text.split(GAP) if seg.strip()]


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(
        st.sampled_from(
            [
                "The Zorbium Tower opened in 1893.",
                "東京の人口は約千四百万人です。",
                "首都圏全体では三千万人を超える",
                "Donaudampfschifffahrtsgesellschaftskapitaen",
                "https://example.com/a/very/long/path/to/a/page/that/never/ends",
                "word",
                "w" * 30,
                "。",
                "！？",
                "\n\n",
                "\n- item",
                "…",
                " ",
            ]
        ),
        min_size=1,
        max_size=150,
    ),
    budget=st.integers(min_value=20, max_value=300),
    per_char=st.booleans(),
)
def test_kept_text_is_the_source_text_between_the_cuts(parts: list[str], budget: int, per_char: bool) -> None:
    """Every run of the trimmed text between two "…" is text of the passage as written (whitespace aside): no word
    or CJK phrase is cut and glued back with a space inside it, nothing is reordered, at any budget, trimmed
    once or twice."""
    count = chars if per_char else words
    text = " ".join(parts) if not per_char else "".join(parts)
    p = [passage(1, "a.md", text), passage(2, "b.md", " ".join(FILLER))]
    question = "When did the Zorbium Tower open and how many people live in 東京?"
    source = " ".join(text.split())
    once = trim_passages(question, p, [], count, budget)
    for trimmed in (once, trim_passages(question, once, [], count, budget * 2 // 3)):
        if trimmed and trimmed[0].text != text:
            for seg in _segments(trimmed[0].text):
                assert seg in source, (seg, source)


def test_an_over_long_sentence_is_cut_between_words_and_a_long_word_glued_back() -> None:
    """v2's first cut of over-long runs sliced inside words and joined the slices with a space
    ("Donaudampfsc hifffahrts…", "三 千万人"): what the model and the Sources panel read was not the text."""
    long_word = "Donaudampfschifffahrtsgesellschaftskapitaen"
    english = (
        " ".join(f"w{i}" for i in range(39)) + f" {long_word} " + " ".join(f"x{i}" for i in range(30)) + "."
    )
    cjk = "東京の人口は約千四百万人で、首都圏全体では三千万人を超える大都市であり、日本の政治と経済の中心でもある"
    for text, count, question in (
        (english, words, f"What is the {long_word}?"),
        (cjk * 2 + "。", chars, "東京の人口は？"),
    ):
        p = [passage(1, "a.md", text), passage(2, "b.md", " ".join(FILLER))]
        full = count(render_prompt(question, p))
        for budget in range(full // 4, full, 3):
            for trimmed in trim_passages(question, p, [], count, budget)[:1]:
                for seg in _segments(trimmed.text):
                    assert seg in " ".join(text.split()), (budget, seg)
