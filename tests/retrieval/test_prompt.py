"""Golden test of THE prompt format: a change here changes what every trained model expects."""

from __future__ import annotations

from retrieval.prompt import NO_ANSWER, SYSTEM_PROMPT, fit_passages, parse_citations, render_prompt
from retrieval.types import Passage, source_label

PASSAGES = [
    Passage(1, "c1", "guide/publish.md", "To publish a new model, run  ragqa retrain.\nIt trains SFT.", 0.9),
    {"text": "Rollback with ragqa models rollback.", "source": "guide/rollback.md"},
]

GOLDEN_USER = (
    "Passages:\n"
    "[1] (source: guide/publish.md)\n"
    "To publish a new model, run ragqa retrain. It trains SFT.\n"
    "\n"
    "[2] (source: guide/rollback.md)\n"
    "Rollback with ragqa models rollback.\n"
    "\n"
    "Question: How do I publish?"
)


def test_golden_prompt() -> None:
    messages = render_prompt("  How do I publish?  ", PASSAGES)
    assert messages == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": GOLDEN_USER},
    ]
    assert SYSTEM_PROMPT == (
        "You are a careful assistant that answers questions about the user's documents. "
        "Answer only from the numbered passages. "
        "Cite every passage you use by its number in square brackets, like [1]. "
        'If the passages do not contain the answer, reply exactly: "The documents do not contain the answer."'
    )
    assert NO_ANSWER in SYSTEM_PROMPT


def test_history_is_kept_before_the_question_and_trimmed() -> None:
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    history.append({"role": "tool", "content": "ignored"})
    messages = render_prompt("and then?", PASSAGES, history)
    assert messages[0]["role"] == "system"
    assert [m["content"] for m in messages[1:-1]] == ["q6", "a6", "q7", "a7", "q8", "a8", "q9", "a9"]
    assert messages[-1]["content"].endswith("Question: and then?")


def test_no_passages_is_explicit() -> None:
    assert "(no passages)" in render_prompt("q", [])[-1]["content"]


def test_fit_passages_drops_lowest_ranked_first() -> None:
    def count(messages: list[dict[str, str]]) -> int:
        return sum(len(m["content"]) for m in messages)

    full = count(render_prompt("q", PASSAGES))
    assert fit_passages("q", PASSAGES, [], count, full) == PASSAGES
    assert fit_passages("q", PASSAGES, [], count, full - 1) == PASSAGES[:1]
    assert fit_passages("q", PASSAGES, [], count, 10) == []


def test_parse_citations() -> None:
    assert parse_citations("It opened in 1893 [2], see also [1, 3] and [2][4].", 4) == [2, 1, 3, 4]
    assert parse_citations("Out of range [7] and [0].", 4) == []
    assert parse_citations("No citation.", 4) == []


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(
    question=st.text(min_size=1, max_size=200).filter(str.strip),
    texts=st.lists(st.text(max_size=300), max_size=5),
    sources=st.lists(st.text(max_size=40), min_size=5, max_size=5),
)
def test_prompt_renders_any_unicode(question: str, texts: list[str], sources: list[str]) -> None:
    passages = [{"text": t, "source": s} for t, s in zip(texts, sources, strict=False)]
    messages = render_prompt(question, passages)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[-1]["content"]
    assert user.endswith(f"Question: {question.strip()}")
    for i, p in enumerate(passages, start=1):
        assert f"[{i}] (source: {source_label(p['source'])})" in user  # one clean line (names are untrusted)
        assert " ".join(p["text"].split()) in user
    # Rendering is a pure function: the same input gives the same prompt.
    assert render_prompt(question, passages) == messages
    assert parse_citations(user, len(passages)) == parse_citations(user, len(passages))
