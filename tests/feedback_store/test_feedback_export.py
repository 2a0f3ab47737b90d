"""Export: golden files for the hand-built history, pair rules, splits, manifest, and `datasets` loading.

Regenerate the golden files on purpose with `UPDATE_GOLDEN=1 pytest tests/feedback_store/test_feedback_export.py`
and review the diff: every line is checked by hand below as well.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from feedback_store.export import KINDS, SPLITS, export_snapshot, file_name, read_manifest, split_of
from feedback_store.migrations import LATEST_VERSION
from feedback_store.store import FeedbackStore
from retrieval.prompt import render_prompt
from tests.feedback_store.feedback_history import History

GOLDEN = Path(__file__).parent / "golden"
TEST_FRACTION = 0.25  # puts "And on Sundays?" (hash 0.21) in test, the other two (0.31, 0.64) in train


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_matches_golden_files(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    manifest = export_snapshot(store, tmp_path / "out", test_fraction=TEST_FRACTION)
    for kind in KINDS:
        for split in SPLITS:
            name = file_name(kind, split)
            got = (tmp_path / "out" / name).read_text(encoding="utf-8")
            if os.environ.get("UPDATE_GOLDEN"):
                (GOLDEN / name).write_text(got, encoding="utf-8")
            assert got == (GOLDEN / name).read_text(encoding="utf-8"), name
    assert manifest.snapshot_id == read_manifest(tmp_path / "out").snapshot_id


def test_pairs_and_demonstrations_by_hand(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    m = export_snapshot(store, tmp_path, test_fraction=TEST_FRACTION)
    train = _rows(tmp_path / "preferences.train.jsonl")
    test = _rows(tmp_path / "preferences.test.jsonl")
    corr = "The library opens at 9 am on weekdays and is closed on Sundays [1][2]."
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["meta"]["source"]) for r in train] == [
        ("It opens at 9 am on weekdays [1].", "It opens at noon.", "ranking"),
        ("It opens at 9 am on weekdays [1].", "Sundays.", "ranking"),
        (corr, "It opens at noon.", "correction"),
    ]
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["meta"]["source"]) for r in test] == [
        ("It is closed on Sundays [1].", "It opens at 10 am.", "thumbs")
    ]
    meta = train[0]["meta"]
    assert meta == {
        "interaction_id": history.i1,
        "source": "ranking",
        "margin": 1,
        "chosen_id": f"candidate:{history.a1}",
        "rejected_id": f"candidate:{history.b1}",
        "chosen_model": "v0001",
        "rejected_model": "v0001",
        "rater": "simulated:f1",
        "user": "",
        "simulated": True,
        "origin": "live",
        "model_version": "v0001",
        "chunk_ids": [p["chunk_id"] for p in store.get_interaction(history.i1).passages],
    }
    assert meta["chunk_ids"]  # the passages shown are named
    assert train[2]["meta"]["chosen_model"] == "human" and train[2]["meta"]["user"] == "alice"
    assert test[0]["meta"]["simulated"] is False and test[0]["meta"]["rater"] == "s-bob"
    # The prompt is exactly THE prompt format for what was shown, including the earlier turns.
    rec2 = store.get_interaction(history.i2)
    assert test[0]["prompt"] == render_prompt(rec2.question, rec2.passages, rec2.context)
    sft_train, sft_test = _rows(tmp_path / "sft.train.jsonl"), _rows(tmp_path / "sft.test.jsonl")
    assert [r["messages"][-1] for r in sft_train] == [{"role": "assistant", "content": corr}]
    assert sft_test == []  # a thumbs-up is an unpaired `label: true` row, not a demonstration
    unpaired = _rows(tmp_path / "unpaired.test.jsonl")
    assert [(r["completion"], r["label"], r["meta"]["reason"]) for r in unpaired] == [
        ([{"role": "assistant", "content": "It is closed on Sundays [1]."}], True, None),
        ([{"role": "assistant", "content": "It opens at 10 am."}], False, "wrong: it is closed"),
    ]
    assert all(r["prompt"] == test[0]["prompt"] for r in unpaired)  # exactly the pairs' prompt
    assert unpaired[1]["meta"]["candidate_id"] == history.b2 and unpaired[1]["meta"]["user"] == "bob"
    assert unpaired[1]["meta"]["model_version"] == "v0002" and unpaired[1]["meta"]["chunk_ids"]
    assert sorted(r["meta"]["source"] for r in _rows(tmp_path / "sft.train.jsonl")) == ["correction"]
    prompts = _rows(tmp_path / "prompts.train.jsonl") + _rows(tmp_path / "prompts.test.jsonl")
    assert sorted(p["interaction_id"] for p in prompts) == [history.i1, history.i2, history.i3]

    assert {n: f["rows"] for n, f in m.files.items()} == {
        "preferences.train.jsonl": 3,
        "preferences.test.jsonl": 1,
        "sft.train.jsonl": 1,
        "sft.test.jsonl": 0,
        "unpaired.train.jsonl": 0,  # interaction 3's "both bad" ranking names no candidate
        "unpaired.test.jsonl": 2,
        "prompts.train.jsonl": 2,
        "prompts.test.jsonl": 1,
    }
    # Simulated: everything about interaction 1 (asked and ranked by simulated:f1): 3 pairs, 1 demo, 1 prompt.
    assert m.simulated == 5
    assert m.counts["both_bad_rankings"] == 1
    assert m.counts["pairs_by_source"] == {"ranking": 2, "correction": 1, "thumbs": 1}
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["counts"]["unpaired_by_label"] == {"true": 1, "false": 1}
    assert on_disk["schema_version"] == LATEST_VERSION and on_disk["store_path"] == str(store.path)
    assert on_disk["files"]["preferences.train.jsonl"]["simulated"] == 3


def test_snapshot_id_is_content_addressed(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    a = export_snapshot(store, tmp_path / "a", test_fraction=TEST_FRACTION)
    b = export_snapshot(store, tmp_path / "b", test_fraction=TEST_FRACTION)
    assert a.snapshot_id == b.snapshot_id and len(a.snapshot_id) == 64
    store.record_correction(
        history.i1, "Weekdays 9 am to 5 pm [1].", replaces=[history.c1], session_id="late"
    )
    c = export_snapshot(store, tmp_path / "c", test_fraction=TEST_FRACTION)
    assert c.snapshot_id != a.snapshot_id
    assert not list((tmp_path / "c").glob(".*partial"))


def test_margins_duplicates_and_ties(store: FeedbackStore, tmp_path: Path) -> None:
    ids = store.record_interaction(
        "Rank four",
        [],
        [{"text": t, "model_version": "v"} for t in ("best", "mid", "worst", "worst ")],
        session_id="s",
    )
    a, b, c, d = ids.candidate_ids
    store.record_ranking(ids.interaction_id, [[a], [b], [c, d]], session_id="r1")
    store.record_ranking(ids.interaction_id, [[a], [b], [c, d]], session_id="r2")  # same pairs again
    m = export_snapshot(store, tmp_path / "all", test_fraction=0.0)
    rows = _rows(tmp_path / "all" / "preferences.train.jsonl")
    # Each ranking implies a>b, a>c, a>d, b>c, b>d (the tie c=d gives nothing): 10 in all. "worst " equals
    # "worst" after whitespace normalisation, so a>d and b>d duplicate a>c and b>c; r2 repeats r1.
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"], r["meta"]["margin"]) for r in rows] == [
        ("best", "mid", 1),
        ("best", "worst", 2),
        ("mid", "worst", 1),
    ]
    assert m.counts["pairs_implied"] == 10 and m.counts["duplicates_dropped"]["preferences"] == 7
    m2 = export_snapshot(store, tmp_path / "far", test_fraction=0.0, min_margin=2)
    assert m2.rows("preferences") == 1 and m2.counts["below_min_margin"] == 6


def test_split_is_by_normalised_question(store: FeedbackStore, tmp_path: Path) -> None:
    questions = [f"Question number {i}?" for i in range(200)]
    for q in questions:
        for variant in (q, "  " + q.upper().replace(" ", "\n ")):
            ids = store.record_interaction(
                variant,
                [],
                [{"text": "x", "model_version": "v"}, {"text": "y", "model_version": "v"}],
                session_id="s",
            )
            store.record_ranking(
                ids.interaction_id, [[ids.candidate_ids[0]], [ids.candidate_ids[1]]], session_id="s"
            )
    m = export_snapshot(store, tmp_path, test_fraction=0.3)
    test_questions = {r["question"].strip().lower() for r in _rows(tmp_path / "prompts.test.jsonl")}
    train_questions = {r["question"].strip().lower() for r in _rows(tmp_path / "prompts.train.jsonl")}
    assert not {" ".join(q.split()) for q in test_questions} & {" ".join(q.split()) for q in train_questions}
    assert 40 <= m.rows("preferences", "test") / 2 <= 80  # about 30% of 200 questions, 2 variants each
    assert split_of("Question number 1?", 0.3) == split_of("QUESTION   number 1?", 0.3)
    assert split_of("anything", 0.0) == "train" and split_of("anything", 1.0) == "test"


def test_bad_test_fraction(store: FeedbackStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        export_snapshot(store, tmp_path, test_fraction=1.5)


def test_datasets_loads_every_export_file(store: FeedbackStore, history: History, tmp_path: Path) -> None:
    from datasets import load_dataset

    export_snapshot(store, tmp_path, test_fraction=TEST_FRACTION)
    expected_columns = {
        "preferences": {"prompt", "chosen", "rejected", "meta"},
        "sft": {"messages", "meta"},
        "unpaired": {"prompt", "completion", "label", "meta"},
        "prompts": {"prompt", "question", "interaction_id", "simulated"},
    }
    for kind in KINDS:
        # `datasets` cannot load an empty split file; this history leaves sft.test and unpaired.train empty.
        files = {
            s: str(tmp_path / file_name(kind, s)) for s in SPLITS if _rows(tmp_path / file_name(kind, s))
        }
        ds = load_dataset("json", data_files=files, cache_dir=str(tmp_path / "hf-cache"))
        for split in files:
            assert set(ds[split].column_names) == expected_columns[kind]
            assert len(ds[split]) == len(_rows(tmp_path / file_name(kind, split)))
    prefs = load_dataset("json", data_files=str(tmp_path / "preferences.train.jsonl"), split="train")
    assert prefs[0]["chosen"] == [{"role": "assistant", "content": "It opens at 9 am on weekdays [1]."}]
    assert prefs[0]["meta"]["simulated"] is True


def test_rows_of_a_gated_answer_say_so(store: FeedbackStore, tmp_path: Path) -> None:
    """The app's relevance gate answered (sampling records it): every row of that interaction is marked, others
    are not (the key is absent, as in the golden files)."""
    passages = [
        {"rank": 1, "chunk_id": "guide.md#1", "source": "guide.md", "text": "Opening hours.", "score": 0.1}
    ]
    no = "The documents do not contain the answer."
    gated = store.record_interaction(
        "What is the capital of France?",
        passages,
        [{"text": no, "model_version": "v2", "sampling": {"relevance_gate": {"best_cosine": 0.1}}}],
        session_id="s",
    )
    store.record_correction(gated.interaction_id, "Paris.", replaces=gated.candidate_ids, session_id="s")
    plain = store.record_interaction(
        "When does it open?", passages, [{"text": "At 9 [1].", "model_version": "v2"}], session_id="s"
    )
    store.record_correction(
        plain.interaction_id, "At 9 am [1].", replaces=plain.candidate_ids, session_id="s"
    )
    export_snapshot(store, tmp_path, test_fraction=0.0)
    for kind in ("sft", "preferences"):
        rows = {r["meta"]["interaction_id"]: r["meta"] for r in _rows(tmp_path / file_name(kind, "train"))}
        assert rows[gated.interaction_id]["relevance_gated"] is True, kind
        assert "relevance_gated" not in rows[plain.interaction_id], kind
    prompts = {r["interaction_id"]: r for r in _rows(tmp_path / file_name("prompts", "train"))}
    assert prompts[gated.interaction_id]["relevance_gated"] is True
    assert "relevance_gated" not in prompts[plain.interaction_id]


def test_gated_prompts_are_not_ppo_prompts(store: FeedbackStore, tmp_path: Path) -> None:
    """The retrain's PPO prompts leave out interactions only the gate answered (the model never saw them), and
    keep one where a later answer came from the model (Regenerate), and say how many were left out."""
    from training.data import load_export

    passages = [{"rank": 1, "chunk_id": "g.md#1", "source": "g.md", "text": "Opening hours.", "score": 0.1}]
    gate = {"text": "The documents do not contain the answer.", "model_version": "v2"}
    gate["sampling"] = {"relevance_gate": {"best_cosine": 0.1}}
    store.record_interaction("What is the capital of France?", passages, [gate], session_id="s")
    store.record_interaction(
        "Who painted the Mona Lisa?",
        passages,
        [gate, {"text": "Leonardo [1].", "model_version": "v2", "sampling": {"temperature": 0.8}}],
        session_id="s",
    )
    store.record_interaction(
        "When does it open?", passages, [{"text": "At 9.", "model_version": "v2"}], session_id="s"
    )
    export_snapshot(store, tmp_path, test_fraction=0.0)
    data = load_export(tmp_path)
    users = [p[-1]["content"] for p in data.prompts["train"]]
    assert len(users) == 2
    assert [any(q in u for u in users) for q in ("France", "Mona Lisa", "When does it open")] == [
        False,
        True,
        True,
    ]
    assert data.counts()["gated_prompts_left_out_train"] == 1


def test_a_prompt_gated_once_and_answered_later_stays_a_ppo_prompt(
    store: FeedbackStore, tmp_path: Path
) -> None:
    """The same prompt first answered by the gate (say, under a higher min_relevance) and later by the model: the
    later copy is not dropped as a duplicate of the gated one, so PPO still gets the prompt, once."""
    from training.data import load_export

    passages = [{"rank": 1, "chunk_id": "g.md#1", "source": "g.md", "text": "Opening hours.", "score": 0.1}]
    gate = {"text": "The documents do not contain the answer.", "model_version": "v2"}
    gate["sampling"] = {"relevance_gate": {"best_cosine": 0.1}}
    store.record_interaction("When does it open?", passages, [gate], session_id="s")
    store.record_interaction(
        "When does it open?", passages, [{"text": "At 9.", "model_version": "v2"}], session_id="s"
    )
    store.record_interaction("When does it open?", passages, [gate], session_id="s")
    export_snapshot(store, tmp_path, test_fraction=0.0)
    rows = _rows(tmp_path / file_name("prompts", "train"))
    assert [bool(r.get("relevance_gated")) for r in rows] == [True, False]
    data = load_export(tmp_path)
    assert len(data.prompts["train"]) == 1
    assert (
        "gated_prompts_left_out_train" not in data.counts()
    )  # it was not left out: its answered copy is kept
