"""Property tests with arbitrary Unicode: what is stored reads back exactly; export -> import -> export keeps
the pairs. Example counts are modest so the suite stays fast."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feedback_store.errors import FeedbackValidationError
from feedback_store.export import SPLITS, export_snapshot, file_name
from feedback_store.importer import import_file
from feedback_store.store import FeedbackStore

text = st.text(max_size=40)
nonblank = text.filter(lambda s: s.strip() != "")
passage = st.fixed_dictionaries(
    {"source": text, "text": text, "chunk_id": text, "score": st.floats(-1e6, 1e6)}
)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": nonblank})
candidate = st.fixed_dictionaries(
    {"text": text, "model_version": nonblank, "sampling": st.dictionaries(text, st.integers())}
)
interaction = st.fixed_dictionaries(
    {
        "question": nonblank,
        "passages": st.lists(passage, max_size=3),
        "context": st.lists(turn, max_size=3),
        "candidates": st.lists(candidate, min_size=1, max_size=4),
        "session": nonblank,
        "user": st.none() | nonblank,
    }
)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _record(store: FeedbackStore, it: dict) -> object:
    return store.record_interaction(
        it["question"],
        it["passages"],
        it["candidates"],
        context=it["context"],
        session_id=it["session"],
        user=it["user"],
    )


@SETTINGS
@given(it=interaction)
def test_what_is_stored_reads_back_exactly(it: dict) -> None:
    with tempfile.TemporaryDirectory() as d, FeedbackStore.open(Path(d) / "f.db") as store:
        ids = _record(store, it)
        rec = store.get_interaction(ids.interaction_id)
        assert rec.question == it["question"] and rec.session_id == it["session"] and rec.user == it["user"]
        assert [(p["source"], p["text"], p["chunk_id"], p["score"]) for p in rec.passages] == [
            (p["source"], p["text"], p["chunk_id"], p["score"]) for p in it["passages"]
        ]
        assert list(rec.context) == it["context"]
        assert [(c.text, c.model_version, c.sampling) for c in rec.candidates] == [
            (c["text"], c["model_version"], c["sampling"]) for c in it["candidates"]
        ]
        assert [c.id for c in rec.candidates] == list(ids.candidate_ids)
        # The same client token twice records once, whatever the content.
        assert (
            store.record_ranking(
                ids.interaction_id, [list(ids.candidate_ids)], session_id="s", client_token="t"
            )
            == 1
        )
        assert (
            store.record_ranking(
                ids.interaction_id, [list(ids.candidate_ids)], session_id="s", client_token="t"
            )
            == 1
        )
        assert store.stats()["rankings"] == 1


@SETTINGS
@given(items=st.lists(st.tuples(interaction, st.randoms(use_true_random=False)), min_size=1, max_size=4))
def test_export_import_export_keeps_pairs(items: list) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        with FeedbackStore.open(root / "a.db") as store:
            for it, rnd in items:
                ids = _record(store, it)
                cands = list(ids.candidate_ids)
                rnd.shuffle(cands)
                cut = rnd.randint(1, len(cands))
                store.record_ranking(
                    ids.interaction_id,
                    [cands[:cut], cands[cut:]] if cut < len(cands) else [cands],
                    session_id=it["session"],
                )
            first = export_snapshot(store, root / "one", test_fraction=0.5)
        merged = root / "all.jsonl"
        merged.write_text(
            "".join((root / "one" / file_name("preferences", s)).read_text(encoding="utf-8") for s in SPLITS),
            encoding="utf-8",
        )
        with FeedbackStore.open(root / "b.db") as fresh:
            if first.rows("preferences"):
                import_file(fresh, merged)
            second = export_snapshot(fresh, root / "two", test_fraction=0.5)
        for split in SPLITS:
            assert _pairs(root / "one", split) == _pairs(root / "two", split)
        assert first.rows("preferences") == second.rows("preferences")


def _pairs(out: Path, split: str) -> list[tuple[str, str, str]]:
    rows = (out / file_name("preferences", split)).read_text(encoding="utf-8").split("\n")[:-1]
    return sorted(
        (json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in map(json.loads, rows)
    )


def test_lone_surrogates_are_a_clear_error(tmp_path: Path) -> None:
    with (
        FeedbackStore.open(tmp_path / "f.db") as store,
        pytest.raises(FeedbackValidationError, match="not valid Unicode"),
    ):
        store.record_interaction("bad \ud800", [], [{"text": "x", "model_version": "v"}], session_id="s")
