"""Out of the box, `ragqa setup` serves the starter, and it answers questions about the bundled user guide.

Ten questions a new user asks about the guide (app/demo_corpus/) and three it cannot answer, from
evaluation/guide_questions.py (written from the guide before the starter was measured on them; the starter never
trained on the guide). Slow: a fresh home, the real default model, the merge and the GGUF export (~3 min on 2 cores).
"""

from __future__ import annotations

import pytest

from evaluation.guide_questions import GUIDE_QUESTIONS, OFF_TOPIC, score_guide
from evaluation.metrics import is_abstention


@pytest.fixture(scope="module")
def starter_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`ragqa setup` in a fresh home, then every question through the real ask path (what `ragqa ask` does)."""
    from app.cli import main
    from app.config import AppConfig
    from app.qa import QAService

    with (
        pytest.MonkeyPatch.context() as mp
    ):  # module-scoped: the per-test RAGQA_HOME fixture does not reach here
        mp.setenv("RAGQA_HOME", str(tmp_path_factory.mktemp("starter-home")))
        assert main(["setup"]) == 0
        qa = QAService(AppConfig.load())
        return {q: qa.ask(q) for q in [q for q, _ in GUIDE_QUESTIONS] + OFF_TOPIC}


def right_count(answers: dict[str, object]) -> tuple[int, str]:
    report = "\n".join(f"{q} -> {answers[q].answer!r}" for q, _ in GUIDE_QUESTIONS)
    return score_guide({q: r.answer for q, r in answers.items()})["right"], report


@pytest.mark.slow
def test_setup_serves_the_starter_and_it_abstains_off_topic(starter_answers) -> None:
    assert {r.model_version for r in starter_answers.values()} == {"v0002"}
    off = {q: starter_answers[q].answer for q in OFF_TOPIC}
    assert all(is_abstention(a) for a in off.values()), off


@pytest.mark.slow
def test_the_starter_answers_the_guide_at_least_as_well_as_measured(starter_answers) -> None:
    # Measured on the shipped starter: 4 of 10 (the raw default model: 0). A regression guard.
    n, report = right_count(starter_answers)
    assert n >= 4, f"{n}/10 right:\n{report}"


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True, reason="the target is 7 of 10; the shipped starter answers 4 (see the README)"
)
def test_the_starter_answers_seven_of_ten_guide_questions(starter_answers) -> None:
    n, report = right_count(starter_answers)
    assert n >= 7, f"{n}/10 right:\n{report}"
