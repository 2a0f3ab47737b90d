"""Feedback you can trust, on the chat's handlers (no browser): every piece of feedback reaches the answer it was
given for, or is refused; un-liking withdraws; rankings can be revised; New chat forgets the conversation.

The browser walk over the same steps is tests/e2e/test_chat_walk.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.services import Services
from app.ui import Handlers, new_state
from feedback_store.export import export_snapshot
from tests.app.test_ui import QUESTION, tiny_services  # noqa: F401  (fixture)

SECOND = "How long does quillbread dough rest?"


def _ask(h: Handlers, question: str, state: dict) -> tuple:
    *_, final = h.ask(question, state)
    return final


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_unliking_withdraws_the_rating(tiny_services: Services, tmp_path: Path) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    assert "👍" in h.like(1, True, state)
    # Gradio 6 sends liked="" when the user clicks the selected thumb again: that takes the rating back.
    assert "withdrawn" in h.like(1, "", state)
    assert "👎" in h.like(1, False, state)
    assert "withdrawn" in h.like(1, None, state)  # a thumbs-down can be taken back too
    (rec,) = list(tiny_services.store.iter_interactions())
    assert [(r.up, r.withdrawn) for r in rec.ratings] == [
        (True, False),
        (False, True),
        (False, False),
        (False, True),
    ]
    m = export_snapshot(tiny_services.store, tmp_path, test_fraction=0.0)
    assert m.rows("unpaired") == 0 and m.rows("sft") == 0 and m.rows("preferences") == 0


def test_a_thumb_on_an_answer_still_being_written_says_so(tiny_services: Services) -> None:  # noqa: F811
    """The chat shows 👍/👎 under an answer from its first streamed piece; a click then cannot be stored (the answer
    is not recorded yet) and must say why, not claim the answer is not of this conversation."""
    h = Handlers(tiny_services)
    state = new_state()
    stream = h.ask(QUESTION, state)
    next(stream)  # the sources are shown, the answer is being written (message 1)
    status = h.like(1, True, state)
    assert status.startswith("⚠️") and "still being written" in status
    for _ in stream:
        pass
    assert "👍" in h.like(1, True, state)
    assert "only answers of this conversation" in h.like(7, True, state)
    (rec,) = list(tiny_services.store.iter_interactions())
    assert [r.up for r in rec.ratings] == [True]


def test_feedback_for_an_answer_no_longer_on_screen_is_refused(tiny_services: Services) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    first = state["last"]["interaction_id"]
    _ask(h, SECOND, state)
    second = state["last"]["interaction_id"]
    # The "better answer" box was filled while the first answer was on screen: it is not stored for the second.
    status = h.correct("The tower opened in 1893 [1].", first, state)
    assert status.startswith("⚠️") and "newer answer" in status
    assert "saved" in h.correct("Nine hours [1].", second, state)
    assert "⚠️" in h.rank("A is better", "", first, state)
    recs = list(tiny_services.store.iter_interactions())
    assert [len(r.corrections) for r in recs] == [0, 1]
    assert recs[1].corrections[0].text == "Nine hours [1]."


def test_a_ranking_can_be_revised(tiny_services: Services, tmp_path: Path) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    iid = state["last"]["interaction_id"]
    h.alternatives(2, state)
    assert "saved" in h.rank("A is better", "", iid, state)
    status = h.rank("B is better", "", iid, state)  # today: "client token already used"
    assert status.startswith("✅") and "client token" not in status
    (rec,) = list(tiny_services.store.iter_interactions())
    a, b = rec.candidates[1].id, rec.candidates[2].id
    assert [r.order for r in rec.rankings] == [((a,), (b,)), ((b,), (a,))]


def test_regenerate_compares_the_original_answer_with_a_new_one(tiny_services: Services) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    iid, original = state["last"]["interaction_id"], state["last"]["answer_id"]
    h.regenerate(state)
    assert list(state["last"]["alternatives"].values())[0] == original  # the answer the user read is one side
    assert "saved" in h.prefer("Response 2", iid, state)
    assert "saved" in h.prefer("Response 1", iid, state)  # revised
    (rec,) = list(tiny_services.store.iter_interactions())
    new = rec.candidates[1].id
    assert [c.label for c in rec.candidates] == ["answer", "regenerated"]
    assert [r.order for r in rec.rankings] == [((new,), (original,)), ((original,), (new,))]


def test_new_chat_starts_a_new_conversation(tiny_services: Services) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    h.new_chat(state)
    assert state["display"] == [] and state["history"] == [] and state["last"] is None
    _ask(h, SECOND, state)
    first, second = list(tiny_services.store.iter_interactions())
    assert second.context == ()  # the old conversation is not in the prompt of the new one
    assert "1" not in state["answers"] or state["answers"]["1"]["interaction_id"] == second.id


def test_thumbs_down_reasons_are_stored_with_the_rating(tiny_services: Services, tmp_path: Path) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    h.like(1, False, state)
    target = state["answers"]["1"]
    assert "saved" in h.explain_down(["Not in the sources"], "made up a date", target, state)
    h.new_chat(state)
    # The reasons panel of a message that is no longer on screen is refused.
    assert "⚠️" in h.explain_down(["Wrong facts"], "", target, state)
    (rec,) = list(tiny_services.store.iter_interactions())
    assert [(r.up, r.reason, r.comment) for r in rec.ratings] == [
        (False, None, None),
        (False, "Not in the sources", "made up a date"),
    ]
    m = export_snapshot(tiny_services.store, tmp_path, test_fraction=0.0)
    (row,) = _rows(tmp_path / "unpaired.train.jsonl")
    assert row["label"] is False and row["meta"]["comment"] == "made up a date" and m.rows("unpaired") == 1


def test_conversations_come_back_after_a_reload(tiny_services: Services) -> None:  # noqa: F811
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    reloaded = new_state()
    (conv_id, title, _updated), *_ = h.conversations(user=None)
    assert title == QUESTION
    h.open_conversation(conv_id, reloaded)
    assert [m["role"] for m in reloaded["display"]] == ["user", "assistant"]
    assert reloaded["history"][0]["content"] == QUESTION
    assert "👍" in h.like(1, True, reloaded)  # an answer of a restored chat can still be rated


def test_stop_ends_the_generation_thread(tiny_services: Services) -> None:  # noqa: F811
    """Stop closes the answer's generator; the transformers backend must then stop generating, not run on."""
    import threading
    import time

    model = tiny_services.qa.generator.current()
    messages = [{"role": "user", "content": "Say many things."}]
    pieces = model.stream(messages, max_new_tokens=4000, timeout_s=120, repetition_penalty=3.0)
    next(iter(pieces))
    pieces.close()
    deadline = time.monotonic() + 10
    while any(t.name == "generate" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "generate" for t in threading.enumerate())


def test_admin_adds_a_document_from_the_ui(tiny_services: Services, ragqa_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from app.auth import Users

    users = Users(ragqa_home / "users.json")
    users.add("alice", "alice-password", "admin")
    users.add("bob", "bob-password-1", "user")
    h = Handlers(tiny_services, users)
    doc = tmp_path / "upload" / "lighthouse.md"  # where Gradio keeps an upload: outside RAGQA_HOME
    doc.parent.mkdir()
    doc.write_text("# Velmora lighthouse\n\nThe Velmora lighthouse lamp is lit at dusk.", encoding="utf-8")
    assert "only admins" in h.add_documents([str(doc)], user="bob")
    assert ("lighthouse.md", "Velmora lighthouse") not in h.documents()
    assert h.add_documents([str(doc)], user="alice").startswith("✅ added")
    assert ("lighthouse.md", "Velmora lighthouse") in h.documents()  # on the start page, and searchable:
    passages = tiny_services.qa.retrieve("When is the Velmora lighthouse lamp lit?")
    assert passages[0].source == "lighthouse.md"


def test_admin_upload_keeps_the_homes_chunking(tiny_services: Services, tmp_path: Path) -> None:  # noqa: F811
    """An upload is ingested with the home's chunking settings (a home indexed with chunk_tokens 120 refused
    every upload when the UI ingested with the defaults: one file cannot change the chunking of the others)."""
    from app.auth import Users
    from retrieval.index import HybridIndex
    from retrieval.ingest import ingest
    from settings.paths import Paths

    configured = tiny_services.config.with_(
        paths=Paths(tmp_path / "home"), chunk_tokens=120, chunk_overlap=20
    )
    embedder = tiny_services.qa.embedder()
    guide = tmp_path / "guide"
    guide.mkdir()
    (guide / "tower.md").write_text("# Tower\n\nThe Zorbium Tower opened in 1893.", encoding="utf-8")
    ingest(guide, configured.paths.index_dir, embedder, progress=False, **configured.ingest_options())
    users = Users(configured.paths.home / "users.json")
    users.add("alice", "alice-password", "admin")
    doc = tmp_path / "upload" / "harbour.md"
    doc.parent.mkdir()
    doc.write_text("# Orrin harbour\n\nThe Orrin harbour gate closes at ten.", encoding="utf-8")
    handlers = Handlers(Services(configured, embedder=embedder), users)
    assert handlers.add_documents([str(doc)], user="alice").startswith("✅ added")
    index = HybridIndex.open(configured.paths.index_dir)
    assert (index.chunking.chunk_tokens, index.chunking.overlap) == (120, 20)
    assert {"tower.md", "harbour.md"} <= set(index.files)
