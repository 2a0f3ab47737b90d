"""benchmarks/docs_qa.py: its questions are answerable from its corpus, and its counts and sign test are right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.docs_qa import (
    CORPUS,
    README_QUESTIONS,
    cached_answers,
    compare,
    is_right,
    rescored,
    score,
    sign_test,
)


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


def test_readme_answers_are_scored_with_whitespace_ignored_and_abstentions_never_right() -> None:
    assert is_right("readmes", "pip install datasets [audio] [1].", ["datasets[audio]"])
    assert not is_right(
        "readmes",
        "conda install -c conda-forge keras [1].",
        dict(README_QUESTIONS)["How do I install datasets with conda?"],
    )
    assert not is_right("readmes", "The documents do not contain the answer.", ["the documents"])
    assert not is_right("readmes", "uvloop [1].", [])  # an off-topic question has no right answer
    # The guide keeps its acceptance test's rule (evaluation/guide_questions.right), spaces included.
    assert is_right("guide", "Run `ragqa ingest PATH` [1].", ["ragqa ingest"])
    assert not is_right("guide", "ragqaingest [1].", ["ragqa ingest"])


def test_rescoring_uses_the_current_phrases_and_drops_the_passage_texts() -> None:
    q = "Which environment variable disables Rich globally?"
    stored = [
        {
            "question": q,
            "phrases": ["stale phrase"],
            "answer": "`TYPER_USE_RICH` [1].",
            "right": False,
            "abstained": False,
            "passages": ["Set TYPER_USE_RICH to False or 0.", "Other text."],
        }
    ]
    (row,) = rescored("readmes", stored)
    assert row["phrases"] == ["typer_use_rich"] and row["right"] and row["retrieval_hit"]
    assert "passages" not in row


def test_cached_answers_are_reused_only_for_the_same_registry_and_version(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    path = tmp_path / "starter-readmes.json"
    assert cached_answers(path, registry, "v0002") is None
    path.write_text(json.dumps({"rows": [], "registry": str(registry.resolve()), "version": "v0002"}))
    assert cached_answers(path, registry, "v0002") is not None
    assert cached_answers(path, registry, "v0003") is None
    assert cached_answers(path, tmp_path, "v0002") is None
