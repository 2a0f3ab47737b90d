"""Feedback a rater changes their mind about: withdrawn thumbs, revised rankings, "both bad"; and saved chats.

Each case runs on SQLite and PostgreSQL (the `store` fixture) and is checked where it matters: in the export.
"""

from __future__ import annotations

import json
from pathlib import Path

from feedback_store.export import export_snapshot
from feedback_store.store import FeedbackStore

PASSAGES = [
    {"source": "tower.md", "text": "The tower opened in 1893.", "chunk_id": "tower.md#0", "score": 0.5}
]


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _ask(store: FeedbackStore, texts: tuple[str, ...] = ("It opened in 1893 [1].", "In 1920.")) -> tuple:
    ids = store.record_interaction(
        "When did the tower open?",
        PASSAGES,
        [{"text": t, "model_version": "v0003"} for t in texts],
        session_id="web:s1",
        user="bob",
    )
    return ids.interaction_id, ids.candidate_ids


def test_withdrawn_thumbs_give_no_row_and_latest_wins(store: FeedbackStore, tmp_path: Path) -> None:
    _iid, (a, b) = _ask(store)
    store.record_rating(a, True, session_id="web:s1", user="bob")
    store.withdraw_rating(a, session_id="web:s1", user="bob")  # un-liked: nothing about `a` counts
    store.record_rating(b, False, reason="wrong", session_id="web:s1", user="bob")
    store.withdraw_rating(b, session_id="web:s1", user="bob")  # a thumbs-down taken back
    store.record_rating(
        b, False, reason="made up", comment="1920 is nowhere", session_id="web:s1", user="bob"
    )
    rec = store.get_interaction(_iid)
    assert [(r.up, r.withdrawn) for r in rec.ratings] == [
        (True, False),
        (False, True),
        (False, False),
        (False, True),
        (False, False),
    ]
    stats = store.stats()
    assert (stats["ratings_up"], stats["ratings_down"], stats["ratings_withdrawn"]) == (1, 2, 2)
    m = export_snapshot(store, tmp_path, test_fraction=0.0)
    (row,) = _rows(tmp_path / "unpaired.train.jsonl")
    assert row["completion"] == [{"role": "assistant", "content": "In 1920."}] and row["label"] is False
    assert (row["meta"]["reason"], row["meta"]["comment"]) == ("made up", "1920 is nowhere")
    assert row["meta"]["model_version"] == "v0003" and row["meta"]["chunk_ids"] == ["tower.md#0"]
    assert "1893" in row["prompt"][-1]["content"]  # the passages shown are in the prompt
    assert m.counts["ratings_withdrawn"] == 2 and m.rows("sft") == 0 and m.rows("preferences") == 0
    # The retrain's KTO stage reads exactly this file.
    from training.data import load_export

    assert [r["label"] for r in load_export(tmp_path).unpaired["train"]] == [False]


def test_a_revised_ranking_replaces_the_earlier_one(store: FeedbackStore, tmp_path: Path) -> None:
    iid, (a, b) = _ask(store)
    store.record_ranking(iid, [[b], [a]], session_id="web:s1", user="bob")
    store.record_ranking(iid, [[a], [b]], session_id="web:s1", user="bob")  # the rater changed their mind
    store.record_ranking(iid, [[b], [a]], session_id="web:other")  # another rater's ranking still counts
    export_snapshot(store, tmp_path, test_fraction=0.0)
    rows = _rows(tmp_path / "preferences.train.jsonl")
    got = sorted((r["chosen"][0]["content"], r["meta"]["rater"]) for r in rows)
    assert got == [("In 1920.", "web:other"), ("It opened in 1893 [1].", "web:s1")]
    assert len(store.get_interaction(iid).rankings) == 3  # every revision is stored


def test_both_bad_gives_a_false_row_per_candidate_until_revised(store: FeedbackStore, tmp_path: Path) -> None:
    iid, (a, b) = _ask(store)
    store.record_ranking(iid, [[a, b]], both_bad=True, session_id="web:s1", user="bob")
    export_snapshot(store, tmp_path / "one", test_fraction=0.0)
    rows = _rows(tmp_path / "one" / "unpaired.train.jsonl")
    assert [(r["completion"][0]["content"], r["label"], r["meta"]["source"]) for r in rows] == [
        ("It opened in 1893 [1].", False, "both_bad"),
        ("In 1920.", False, "both_bad"),
    ]
    store.record_ranking(iid, [[a], [b]], session_id="web:s1", user="bob")
    m = export_snapshot(store, tmp_path / "two", test_fraction=0.0)
    assert m.rows("unpaired") == 0 and m.rows("preferences") == 1


def test_conversations_are_saved_per_owner(store: FeedbackStore) -> None:
    store.save_conversation(
        "c1", "bob", "When did the tower open?", {"display": [{"role": "user", "content": "q"}]}
    )
    store.save_conversation("c2", "bob", "Quillbread", {"display": []})
    store.save_conversation("c1", "bob", "When did the tower open?", {"display": [], "history": []})
    store.save_conversation("c1", "eve", "stolen", {"display": ["x"]})  # another owner cannot overwrite it
    assert [c[0] for c in store.list_conversations("bob")] == ["c1", "c2"]
    assert store.load_conversation("c1", "bob") == {"display": [], "history": []}
    assert store.load_conversation("c1", "eve") is None and store.list_conversations("eve") == []
