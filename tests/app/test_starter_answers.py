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
def starter_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """`ragqa setup` in a fresh home, then every question through the real ask path (what `ragqa ask` does)."""
    from app.cli import main
    from app.config import AppConfig
    from app.qa import QAService

    with (
        pytest.MonkeyPatch.context() as mp
    ):  # module-scoped: the per-test RAGQA_HOME fixture does not reach here
        mp.setenv("RAGQA_HOME", str(tmp_path_factory.mktemp("starter-home")))
        assert main(["setup"]) == 0
        questions = [q for q, _ in GUIDE_QUESTIONS] + OFF_TOPIC
        # The passages whole, as the starter was measured (on a GPU, or `max_prompt_tokens: off`) ...
        whole = QAService(AppConfig.load(max_prompt_tokens="off"))
        # ... and as this machine serves them by default (a CPU trims them to its prompt limit: app/prompt_limit.py).
        served = QAService(AppConfig.load(max_prompt_tokens="448"))  # the limit auto sets without AVX-512
        return {
            "whole": {q: whole.ask(q) for q in questions},
            "served": {q: served.ask(q) for q in questions},
        }


def right_count(answers: dict[str, object]) -> tuple[int, str]:
    report = "\n".join(f"{q} -> {answers[q].answer!r}" for q, _ in GUIDE_QUESTIONS)
    return score_guide({q: r.answer for q, r in answers.items()})["right"], report


@pytest.mark.slow
def test_setup_serves_the_starter_and_it_abstains_off_topic(starter_answers) -> None:
    assert {r.model_version for r in starter_answers["whole"].values()} == {"v0002"}
    off = {q: starter_answers["whole"][q].answer for q in OFF_TOPIC}
    assert all(is_abstention(a) for a in off.values()), off


@pytest.mark.slow
def test_the_starter_answers_seven_of_ten_guide_questions(starter_answers) -> None:
    """The issue's line, with the passages whole (as the starter is measured): 7 of 10 for the shipped starter (its
    first pass, before the markdown dressing: 4; the raw default model: 0)."""
    n, report = right_count(starter_answers["whole"])
    assert n >= 7, f"{n}/10 right:\n{report}"


@pytest.mark.slow
def test_the_starter_as_served_by_default_on_this_machine(starter_answers) -> None:
    """With the CPU's prompt limit (448 tokens without AVX-512) the trimmed passages cost one answer: 6 of 10 (with
    the 704 tokens of an AVX-512 CPU also 6; the first pass: 4 either way). Off-topic questions
    are answered by the relevance gate, not the model, whatever the prompt limit: before the gate the starter said
    "What is the capital of France?" -> "Paris [1]." over the 4 trimmed passages (it knows capitals and ignores
    the passages; 3 of 3 with the passages whole was partly luck). Recorded in the README."""
    served = starter_answers["served"]
    n, report = right_count(served)
    assert n >= 6, f"{n}/10 right:\n{report}"
    for q in OFF_TOPIC:
        assert is_abstention(served[q].answer), (q, served[q].answer)
        assert "relevance_gate" in served[q].generation, (q, served[q].generation)
    assert not any("relevance_gate" in served[q].generation for q, _ in GUIDE_QUESTIONS)
