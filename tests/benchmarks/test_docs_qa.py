"""benchmarks/docs_qa.py: its questions are answerable from its corpus, and its counts and sign test are right."""

from __future__ import annotations

import pytest

from benchmarks.docs_qa import CORPUS, README_QUESTIONS, compare, score, sign_test


def test_every_readme_question_has_its_answer_in_the_corpus() -> None:
    """A key phrase no README holds would make a question no model can get right (a typo in the phrase, or a
    corpus file that changed)."""
    text = " ".join(p.read_text(encoding="utf-8").lower() for p in sorted(CORPUS.glob("*.md")))
    assert len(list(CORPUS.glob("*.md"))) == 5
    missing = [q for q, phrases in README_QUESTIONS if not any(ph in text for ph in phrases)]
    assert missing == []
    assert len({q for q, _ in README_QUESTIONS}) == len(README_QUESTIONS) == 24


def test_the_sign_test_is_exact() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 2) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(0, 10) == pytest.approx(2 / 1024)
    assert sign_test(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def _row(q: str, right: bool, abstained: bool = False, hit: bool = True, phrases: bool = True) -> dict:
    return {
        "question": q,
        "phrases": ["x"] if phrases else [],
        "right": right,
        "abstained": abstained,
        "retrieval_hit": hit and phrases,
    }


def test_scores_and_paired_counts() -> None:
    a = [
        _row("q1", True),
        _row("q2", False, abstained=True),
        _row("q3", True, hit=True),
        _row("off", False, True, phrases=False),
    ]
    b = [
        _row("q1", True),
        _row("q2", True),
        _row("q3", False, hit=True),
        _row("off", False, False, phrases=False),
    ]
    assert score(a) == {
        "right": 2,
        "of": 3,
        "abstained": 1,
        "retrieval_hit": 3,
        "off_topic_abstained": 1,
        "off_topic": 1,
    }
    assert score(b)["right"] == 2 and score(b)["off_topic_abstained"] == 0
    c = compare(a, b)
    assert (c["questions"], c["only_a"], c["only_b"]) == (3, 1, 1)
    assert c["p_sign_test"] == 1.0
