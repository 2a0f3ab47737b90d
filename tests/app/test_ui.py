"""The Gradio app driven over HTTP with gradio_client, as a browser session would: ask (streamed), alternatives,
ranking, thumbs, correction, admin counts; then the export holds what the user saw and said.

The tiny random Llama and the hash embedder keep the main test fast; the slow test asks the real default model
with the real embedder. gradio_client cannot send LikeData (Gradio 6.31: the handler gets evt=None), so `like` is checked on the handler
and on the event wiring directly.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import AppConfig
from app.services import Services
from app.ui import Handlers, launch, new_state, stats_markdown
from feedback_store.export import export_snapshot
from model_store.registry import ModelRegistry
from retrieval.embedder import HashEmbedder
from retrieval.ingest import ingest

DOCS = {
    "kelvale/tower.md": "# The Zorbium Tower\n\nThe Zorbium Tower in Kelvale opened on 14 March 1893. "
    "It is 212 metres tall and was designed by the engineer Alma Pettersen.",
    "recipes/quillbread.txt": "Quillbread is baked from fermented oat flour and blue sorrel. "
    "The dough rests for nine hours before it is baked at 190 degrees.",
    "ships/marigold.md": "The research ship Marigold Vance carries a crew of 31 and was launched from Tessport "
    "in 2011. Its home port is Orrin Bay.",
}
QUESTION = "When did the Zorbium Tower open?"
CORRECTION = "The Zorbium Tower opened on 14 March 1893 [1]."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ingest(cfg: AppConfig, tmp_path: Path, embedder: object) -> None:
    root = tmp_path / "docs"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    ingest(root, cfg.paths.index_dir, embedder, progress=False)


@pytest.fixture
def tiny_services(ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path) -> Iterator[Services]:
    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    cfg = AppConfig.load(max_new_tokens=12, port=_free_port(), host="127.0.0.1")
    embedder = HashEmbedder()
    _ingest(cfg, tmp_path, embedder)
    services = Services(cfg, embedder=embedder)
    yield services
    services.close()


@pytest.fixture
def served(tiny_services: Services) -> Iterator[tuple[Services, object]]:
    from gradio_client import Client

    demo, url = launch(tiny_services, prevent_thread_lock=True)
    try:
        yield tiny_services, Client(url, verbose=False)
    finally:
        demo.close()


def _last_answer(chat: list[dict]) -> str:
    content = chat[-1]["content"]
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def test_feedback_round_trip_over_http(served: tuple[Services, object], tmp_path: Path) -> None:
    services, client = served
    # An error reaches the user as a visible status, and the question is left in the box to fix.
    chat, _sources, _model, status, question_box = client.predict("   ", api_name="/ask")
    assert "question is empty" in status and chat == []

    job = client.submit(QUESTION, api_name="/ask")
    chat, sources, model, status, question_box = job.result(timeout=120)
    assert len(job.outputs()) >= 2, "the answer is streamed: several updates before the final one"
    assert [m["role"] for m in chat] == ["user", "assistant"]
    # The box was cleared when the question was taken; later updates leave it alone (a next question typed
    # while the answer streams must survive), so the last update is a no-change.
    assert "Answered in" in status and "v0001" in model and question_box in ("", {"__type__": "update"})
    assert "[1] kelvale/tower.md" in sources  # the hash embedder + BM25 find the tower first

    *boxes, status = client.predict(2, api_name="/alternatives")
    assert status.startswith("2 alternatives"), status
    # four candidate boxes (the ranking group is layout: the client gets no value for it), then the status
    assert [bool(b["visible"]) for b in boxes] == [True, True, False, False]
    assert boxes[0]["value"].startswith("**A**") and boxes[1]["value"].startswith("**B**")

    assert "ranking saved" in client.predict("A is better", "", api_name="/rank")
    assert "replaces your earlier one" in client.predict("B is better", "", api_name="/rank")  # a revision
    assert "saved as an example of a good answer" in client.predict(CORRECTION, api_name="/correct")
    assert "ragqa feedback stats" in client.predict(api_name="/stats")  # no logins: admin views are CLI-only
    stats = stats_markdown(services.store.stats())
    assert "| interactions | 1 |" in stats and "| candidates | 3 |" in stats and "| rankings | 2 |" in stats
    assert "| corrections | 1 |" in stats

    store = services.store
    (rec,) = list(store.iter_interactions())
    assert rec.question == QUESTION and rec.session_id.startswith("web:")
    assert [c.label for c in rec.candidates] == ["answer", "A", "B"]
    shown = {p["source"]: p["text"] for p in rec.passages}
    assert shown["kelvale/tower.md"] == DOCS["kelvale/tower.md"]

    manifest = export_snapshot(store, tmp_path / "export", test_fraction=0.0)
    pairs = [json.loads(x) for x in manifest.path("preferences", "train").read_text().splitlines()]
    sft = [json.loads(x) for x in manifest.path("sft", "train").read_text().splitlines()]
    a, b = rec.candidates[1], rec.candidates[2]
    ranking = [p for p in pairs if p["meta"]["source"] == "ranking"]
    if a.text.split() != b.text.split():  # identical samples carry no preference; the revision (B) counts
        assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in ranking] == [
            (b.text, a.text)
        ]
    corrections = [p for p in pairs if p["meta"]["source"] == "correction"]
    assert {p["chosen"][0]["content"] for p in corrections} == {CORRECTION}
    assert len(corrections) == len({" ".join(c.text.split()) for c in rec.candidates})
    user_message = pairs[0]["prompt"][-1]
    assert user_message["role"] == "user" and QUESTION in user_message["content"]
    for text in shown.values():  # every passage shown is in the prompt trained on (whitespace collapsed)
        assert " ".join(text.split()) in " ".join(user_message["content"].split())
    assert any(row["messages"][-1]["content"] == CORRECTION for row in sft)
    assert not any(p["meta"]["simulated"] for p in pairs)


def test_alternatives_and_ranking_before_asking_are_refused(served: tuple[Services, object]) -> None:
    _services, client = served
    *_boxes, status = client.predict(2, api_name="/alternatives")
    assert "ask a question first" in status
    assert "ask a question first" in client.predict("A is better", "", api_name="/rank")
    assert "ask a question first" in client.predict("Response 1", api_name="/prefer")[1]


def _ask(h: Handlers, question: str, state: dict) -> tuple:
    *_, final = h.ask(question, state)
    return final


def test_like_handler_reaches_the_right_answer(tiny_services: Services) -> None:
    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    _ask(h, "How long does quillbread dough rest?", state)
    # chat messages: 0 user, 1 answer, 2 user, 3 answer
    assert "only answers of this conversation" in h.like(0, True, state)
    assert "👎 saved" in h.like(1, False, state)
    assert "👍 saved" in h.like([3], True, state)
    first, second = list(tiny_services.store.iter_interactions())
    assert [r.up for r in first.ratings] == [False] and [r.up for r in second.ratings] == [True]
    assert first.ratings[0].candidate_id == first.candidates[0].id


def test_an_empty_earlier_answer_does_not_turn_feedback_off(tiny_services: Services) -> None:
    """An empty answer in the conversation is not context the model saw; the next question is still recorded."""
    h = Handlers(tiny_services)
    state = new_state()
    state["history"] = [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": ""}]
    status = _ask(h, QUESTION, state)[3]
    assert status.startswith("Answered in"), status
    (rec,) = list(tiny_services.store.iter_interactions())
    assert rec.context == ({"role": "user", "content": "Hello?"},)


def test_like_event_receives_the_like_data(tiny_services: Services) -> None:
    """The chat's like event must get gr.LikeData: Gradio injects it only for a parameter annotated with it."""
    import gradio as gr
    from gradio.helpers import special_args

    from app.ui import build_ui

    h = Handlers(tiny_services)
    state = new_state()
    _ask(h, QUESTION, state)
    demo = build_ui(tiny_services)
    (like_fn,) = [f for f in demo.fns.values() if "like" in [t[1] for t in f.targets]]
    event = gr.LikeData(None, {"index": 1, "value": "x", "liked": True})
    args, *_ = special_args(like_fn.fn, [state], None, event)
    status, down_panel, target, *_ = like_fn.fn(*args)
    assert "👍 saved" in status and down_panel["visible"] is False and target is None


@pytest.mark.slow
def test_real_default_model_answers_over_http(default_registry: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    from retrieval.embedder import SentenceTransformerEmbedder

    cfg = AppConfig.load(max_new_tokens=48, port=_free_port(), host="127.0.0.1")
    _ingest(cfg, tmp_path, SentenceTransformerEmbedder(cfg.embedder))
    services = Services(cfg)
    demo, url = launch(services, prevent_thread_lock=True)
    try:
        client = Client(url, verbose=False)
        job = client.submit(QUESTION, api_name="/ask")
        chat, sources, model, status, _box = job.result(timeout=300)
        assert len(job.outputs()) >= 3, "tokens are streamed"
        assert _last_answer(chat).strip() and "(empty answer)" not in _last_answer(chat)
        assert sources.startswith("**[1] kelvale/tower.md**"), sources
        assert "Answered in" in status and "v0001" in model
    finally:
        demo.close()
        services.close()
