"""Follow-ups without topic leaks, measured with the real embedder on tests/fixtures/followups.jsonl.

The app's query choice (retrieval/followup.py, used by QAService.retrieve) against the old behaviour (the
previous question always joined to the question): no worse on follow-ups, better on changes of topic, and
fewer passages from the old topic. benchmarks/followups.py prints the same numbers as a table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.followups import KINDS, build_retriever, evaluate, load_set
from retrieval.followup import choose_query, previous_question


@pytest.fixture(scope="module")
def demo_retriever(tmp_path_factory: pytest.TempPathFactory):
    from retrieval.embedder import SentenceTransformerEmbedder

    return build_retriever(tmp_path_factory.mktemp("followups") / "index", SentenceTransformerEmbedder())


def test_the_set_is_big_enough_and_names_real_documents() -> None:
    rows = load_set()
    corpus = {p.name for p in (Path(__file__).resolve().parents[2] / "app" / "demo_corpus").iterdir()}
    assert all(sum(r["kind"] == kind for r in rows) >= 20 for kind in KINDS)
    assert {r["expected"] for r in rows} | {r["previous_source"] for r in rows} <= corpus
    changes = [r for r in rows if r["kind"] == "topic_change"]
    assert all(r["expected"] != r["previous_source"] for r in changes)


def test_follow_ups_stay_found_and_topic_changes_stop_leaking(demo_retriever) -> None:
    results = evaluate(demo_retriever, load_set(), k=4, methods=["joined", "app"])
    old, new = results["joined"], results["app"]
    for metric in ("hit@1", "hit@k"):
        assert new["follow_up"][metric] >= old["follow_up"][metric], (metric, results)
        assert new["topic_change"][metric] >= old["topic_change"][metric], (metric, results)
    assert new["topic_change"]["hit@1"] >= old["topic_change"]["hit@1"] + 0.15, results
    assert new["topic_change"]["leak@k"] < old["topic_change"]["leak@k"], results
    assert new["follow_up"]["hit@1"] >= 0.9, results


def test_choice_reasons(demo_retriever) -> None:
    history = [
        {"role": "user", "content": "How do I roll back to an earlier model version?"},
        {"role": "assistant", "content": "Run ragqa models rollback VERSION."},
    ]
    follow = choose_query(demo_retriever, "And without giving a version?", previous_question(history))
    assert follow.follow_up and follow.query.startswith("How do I roll back")
    assert follow.cosine_joined > follow.cosine_alone
    change = choose_query(
        demo_retriever, "Which files are skipped during an ingest?", previous_question(history)
    )
    assert not change.follow_up and change.query == "Which files are skipped during an ingest?"
    first = choose_query(demo_retriever, "How do I roll back?", previous_question([]))
    assert not first.follow_up and first.query == "How do I roll back?"
