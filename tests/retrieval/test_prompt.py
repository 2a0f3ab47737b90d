"""Golden test of THE prompt format: a change here changes what every trained model expects."""

from __future__ import annotations

from retrieval.prompt import NO_ANSWER, SYSTEM_PROMPT, fit_passages, parse_citations, render_prompt
from retrieval.types import Passage

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
