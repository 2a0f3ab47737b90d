"""The acceptance walk of "feedback you can trust", in Debian's Chromium: a user asks, 👍 and takes it back, asks a
new question (every feedback panel resets), fails to save a correction written for the old answer, regenerates
and chooses, changes that choice, 👎 with a reason, stops an answer, starts a new chat; then `ragqa feedback
export` holds exactly the rows that walk implies, each on the question it was given for.

Every step's screenshot goes to test-artifacts/browser/<test>/; with RAGQA_DOC_SCREENSHOTS=1 the start page, an
answer with its sources and the regenerate comparison also replace the README's pictures in docs/screenshots/
(not on every run: a test run must not change tracked files).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth import Users
from app.cli import main as ragqa
from app.config import AppConfig
from app.services import Services
from app.ui import launch
from benchmarks.load import DOCS, free_port
from model_store.registry import ModelRegistry
from retrieval.embedder import HashEmbedder
from retrieval.ingest import ingest
from tests.e2e.waits import wait_for_text

DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
UPDATE_DOC_SHOTS = os.environ.get("RAGQA_DOC_SCREENSHOTS") == "1"
Q1 = "When did the Zorbium Tower open?"
Q2 = "How long does quillbread dough rest?"
Q3 = "Who designed the Zorbium Tower?"
Q4 = "Where is the home port of the Marigold Vance?"
NEXT = "And how tall is it?"
STALE = "The Zorbium Tower opened on 14 March 1893 [1]."
COMMENT = "nine hours is in the passage, the answer does not say it"
TIMEOUT_MS = 90_000
BOX = "Ask a question about your documents…"


@pytest.fixture
def walk_app(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Services]]:
    """The app with logins, the tiny random Llama, 3 documents; the answer the walk stops streams slowly."""
    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    _slow_stream_for(Q3, monkeypatch)
    cfg = AppConfig.load(max_new_tokens=120, repetition_penalty=3.0, port=free_port(), host="127.0.0.1")
    docs = tmp_path / "docs"
    for rel, text in DOCS.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text, encoding="utf-8")
    ingest(docs, cfg.paths.index_dir, HashEmbedder(), progress=False)
    users = Users(ragqa_home / "users.json")
    users.add("bob", "bob-password-1", "user")
    services = Services(cfg, embedder=HashEmbedder())
    demo, url = launch(services, prevent_thread_lock=True, users=users)
    try:
        yield url, services
    finally:
        demo.close()
        services.close()


def _slow_stream_for(question: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer to `question` streams at 20 tokens/s, as a real model on a CPU does: the tiny model writes its
    120 tokens in well under a second, and on a fast idle CPU the answer had finished before the walk pressed
    Stop (the app then rightly said "already finished; it is saved", and the walk failed)."""
    import time

    from app.backends.transformers_lm import TransformersModel

    real = TransformersModel._stream

    def stream(self, messages, decoding, stats):  # noqa: ANN001, ANN202
        slow = question in messages[-1]["content"]
        for piece in real(self, messages, decoding, stats):
            if slow:
                time.sleep(0.05)
            yield piece

    monkeypatch.setattr(TransformersModel, "_stream", stream)


def _shot(artifacts: Path, name: str) -> Path:
    """Where a README picture goes: docs/screenshots/ when updating them, else this run's artifacts."""
    if UPDATE_DOC_SHOTS:
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SHOTS / name
    return artifacts / name


def _status(page: object, pattern: str) -> str:
    return wait_for_text(page, pattern, last=True)


def _ask(page: object, question: str) -> None:
    box = page.get_by_placeholder(BOX)
    box.fill(question)
    box.press("Enter")
    page.locator('[data-testid="user"]', has_text=question).wait_for()
    _status(page, r"Answered in [\d.]+ s")


def _answers(services: Services) -> dict[str, object]:
    return {rec.question: rec for rec in services.store.iter_interactions()}


def _rows(folder: Path, kind: str) -> list[dict]:
    return [
        json.loads(x)
        for s in ("train", "test")
        for x in (folder / f"{kind}.{s}.jsonl").read_text().splitlines()
    ]


def test_feedback_walk_then_export_holds_exactly_what_was_said(
    chromium: object, walk_app: tuple[str, Services], artifacts: Path, tmp_path: Path
) -> None:
    url, services = walk_app
    context = chromium.new_context(viewport={"width": 1360, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url)
    page.locator("input[type=text]").first.fill("bob")
    page.locator("input[type=password]").fill("bob-password-1")
    page.get_by_role("button", name="Login").click()
    page.get_by_placeholder(BOX).wait_for()
    try:
        _walk(page, artifacts)
    except Exception:
        page.screenshot(path=artifacts / "failure.png", full_page=True)
        raise
    context.close()
    _check_store_and_export(services, tmp_path)


def _walk(page: object, artifacts: Path) -> None:  # noqa: PLR0915 (one user's walk, in order)
    # 0. The start page lists the indexed documents and offers example questions.
    page.get_by_text("3 document(s) indexed").wait_for()
    assert page.get_by_text("The Zorbium Tower").count() >= 1
    page.get_by_text("Tell me about The Zorbium Tower").wait_for()
    page.wait_for_timeout(1500)  # the chat list loads after the page: let it settle for the picture
    page.screenshot(path=_shot(artifacts, "chat-start-page.png"))

    # 1. Ask; the answer shows its sources, each [n] opens to the full passage, with a relevance in %.
    _ask(page, Q1)
    bot = page.locator('[data-testid="bot"]').last
    bot.locator("summary").first.click()
    assert bot.locator("details[open]").count() == 1
    assert re.search(r"\[1\] kelvale/tower\.md · relevance \d+%", bot.inner_text())
    page.screenshot(path=_shot(artifacts, "chat-answer-with-sources.png"))

    # 2. 👍, then 👍 again to take it back (Gradio sends an empty `liked`): withdrawn, not a 👎.
    page.get_by_role("button", name="Like", exact=True).last.click()
    _status(page, r"👍 saved")
    page.get_by_role("button", name="Liked", exact=True).last.click()
    _status(page, r"rating withdrawn")
    page.screenshot(path=artifacts / "02-unliked.png", full_page=True)

    # 3. Start writing a better answer for Q1, then ask Q2: every panel is emptied.
    page.get_by_text("Write a better answer").click()
    correction = page.get_by_label("Your answer (cite passages as [1], [2]…)")
    correction.fill(STALE)
    _ask(page, Q2)
    assert correction.input_value() == ""
    assert not page.get_by_text("Which response do you prefer?").is_visible()
    assert not page.get_by_text("What was wrong with this answer?").is_visible()

    # 4. The stale correction cannot be saved (the box is empty; the server would refuse the old id anyway).
    page.get_by_role("button", name="Save my answer").click()
    assert "write your answer" in _status(page, r"write your answer in the box first")
    page.screenshot(path=artifacts / "04-stale-correction-refused.png", full_page=True)

    # 5. Regenerate: the answer read (Response 1) beside a new one; choose Response 2.
    page.get_by_role("button", name="🔄 Regenerate").click()
    page.get_by_role("heading", name="Which response do you prefer?").wait_for()
    page.get_by_text("Response 1 (the answer you read)").wait_for()
    page.wait_for_timeout(6500)  # the earlier toasts fade out, so the picture shows the comparison
    page.get_by_role("heading", name="Which response do you prefer?").scroll_into_view_if_needed()
    page.screenshot(path=_shot(artifacts, "chat-regenerate-comparison.png"), full_page=True)
    page.get_by_label("Response 2").check()
    page.get_by_role("button", name="Save my choice").click()
    _status(page, r"choice saved")

    # 6. Revise: Response 1 after all; the chat shows the preferred answer again.
    page.get_by_label("Response 1").check()
    page.get_by_role("button", name="Save my choice").click()
    _status(page, r"replaces your earlier one")

    # 7. 👎 on the answer, with a reason and a comment.
    page.get_by_role("button", name="Dislike", exact=True).last.click()
    page.get_by_text("What was wrong with this answer?").wait_for()
    page.get_by_label("Not in the sources").check()
    page.get_by_placeholder("Tell us more (optional)").fill(COMMENT)
    page.get_by_role("button", name="Send feedback").click()
    _status(page, r"reasons are saved")
    page.screenshot(path=artifacts / "07-disliked-with-reason.png", full_page=True)

    # 8. Stop an answer while it streams: the partial answer stays, marked, and is not recorded.
    box = page.get_by_placeholder(BOX)
    box.fill(Q3)
    box.press("Enter")
    page.get_by_text(re.compile(r"^Answering…")).first.wait_for()
    box.fill(NEXT)  # typed while the answer streams: the stream must not wipe it
    page.wait_for_timeout(300)
    assert box.input_value() == NEXT
    page.get_by_role("button", name="■ Stop").click()
    # the status line itself ("✅ ..."; the toast beside it has no ✅): an update of the cancelled stream that
    # lands after Stop's once left "Answering…" there under the toast
    _status(page, r"^✅ Stopped\. The partial answer is not saved")
    page.wait_for_timeout(1_000)
    assert page.get_by_text(re.compile(r"^Answering…")).count() == 0
    # the chat and the status come in one update, but the chatbot renders its markdown after the status line: on
    # busy cores an immediate count found nothing (CI at 3c3c9d0), so wait for the mark as a user would see it
    page.get_by_text("this partial answer is not saved").first.wait_for(timeout=15_000)
    assert box.input_value() == NEXT  # still there to send
    page.screenshot(path=artifacts / "08-stopped.png", full_page=True)

    # 9. New chat: the old conversation is gone from the screen, the prompt and the search.
    page.get_by_role("button", name="➕ New chat").click()
    page.get_by_text("3 document(s) indexed").wait_for()
    assert page.locator('[data-testid="user"]').count() == 0
    _ask(page, Q4)
    page.screenshot(path=artifacts / "09-new-chat.png", full_page=True)


def _check_store_and_export(services: Services, tmp_path: Path) -> None:
    # The store: Q3 (stopped) was never recorded; Q4 was asked without the old conversation.
    recs = _answers(services)
    assert sorted(recs) == sorted([Q1, Q2, Q4])
    assert recs[Q4].context == () and len(recs[Q2].context) == 2
    q2 = recs[Q2]
    original, regenerated = q2.candidates
    assert (original.label, regenerated.label) == ("answer", "regenerated")

    out = tmp_path / "export"
    assert ragqa(["feedback", "export", "--out", str(out), "--test-fraction", "0"]) == 0
    prefs, sft, unpaired = _rows(out, "preferences"), _rows(out, "sft"), _rows(out, "unpaired")
    prompts = _rows(out, "prompts")
    assert sorted(p["question"] for p in prompts) == sorted([Q1, Q2, Q4])
    assert sft == []  # the stale correction was never stored
    # Exactly one preference: the REVISED choice, the original answer over the regenerated one, for Q2.
    if " ".join(original.text.split()) != " ".join(regenerated.text.split()):
        assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in prefs] == [
            (original.text, regenerated.text)
        ]
        assert prefs[0]["meta"]["source"] == "ranking" and prefs[0]["meta"]["interaction_id"] == q2.id
    else:  # the sample repeated the answer word for word: no preference in it
        assert prefs == []
    # Exactly one unpaired row: the 👎 with its reason on Q2's answer; the withdrawn 👍 on Q1 gave nothing.
    assert [(u["completion"][0]["content"], u["label"]) for u in unpaired] == [(original.text, False)]
    meta = unpaired[0]["meta"]
    assert (meta["reason"], meta["comment"], meta["user"]) == ("Not in the sources", COMMENT, "bob")
    assert meta["interaction_id"] == q2.id and meta["chunk_ids"] == [p["chunk_id"] for p in q2.passages]
    assert meta["model_version"] == "v0001"
    for row in [*prefs, *unpaired]:  # none attached to the wrong question
        assert Q2 in row["prompt"][-1]["content"] and Q1 not in row["prompt"][-1]["content"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["ratings_withdrawn"] == 1 and manifest["counts"]["unpaired_by_label"] == {
        "true": 0,
        "false": 1,
    }
