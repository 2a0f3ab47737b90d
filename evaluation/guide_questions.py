"""Questions a new user asks about the bundled user guide (app/demo_corpus/), with the key phrases of a right answer.

Written from the guide before the starter was measured on them; nothing trains on the guide. Used by the slow test
tests/app/test_starter_answers.py (what `ragqa setup` serves must answer them) and by benchmarks/starter_sweep.py's
`guide` command (each candidate starter measured the same way).
"""

from __future__ import annotations

from evaluation.metrics import is_abstention

# (question, key phrases: a right answer contains any one of them, case-insensitive)
GUIDE_QUESTIONS: list[tuple[str, list[str]]] = [
    ("How do I add a folder of documents to the index?", ["ragqa ingest"]),
    ("Which file formats can be ingested?", ["pdf", "markdown", ".md"]),
    ("What is the default size limit for ingested files?", ["50 mb"]),
    ("Where does the app store its state by default?", ["./var", "ragqa_home"]),
    ("How many passages are given to the model by default?", ["4", "four"]),
    ("Which command switches back to an earlier model version?", ["rollback"]),
    ("Which command lists all model versions?", ["ragqa models list"]),
    ("What does ragqa retrain --dry-run do?", ["plan"]),
    ("Which embedding model does the dense search use?", ["minilm"]),
    ("What port does the chat UI use by default?", ["7860"]),
]
# The guide cannot answer these: the right answer is the abstention sentence.
OFF_TOPIC: list[str] = [
    "What is the capital of France?",
    "Who wrote Pride and Prejudice?",
    "How many moons does Mars have?",
]


def right(answer: str, phrases: list[str]) -> bool:
    return not is_abstention(answer) and any(p in answer.lower() for p in phrases)


def score_guide(answers: dict[str, str]) -> dict[str, int]:
    """How many guide questions were answered right, and on how many off-topic ones the model abstained."""
    return {
        "right": sum(right(answers[q], phrases) for q, phrases in GUIDE_QUESTIONS),
        "of": len(GUIDE_QUESTIONS),
        "off_topic_abstained": sum(is_abstention(answers[q]) for q in OFF_TOPIC),
        "off_topic": len(OFF_TOPIC),
    }
