"""Chat state belongs to the user who made it; uploads are for admins, size-capped and cleaned (real server, HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.access import UPLOAD_CACHE_CLEANUP
from app.services import Services
from app.ui import launch
from tests.app.test_ui import QUESTION
from tests.security.conftest import ALICE, BOB, login


def test_another_user_cannot_use_a_known_session_hash(served_with_auth: tuple[Services, str]) -> None:
    from gradio_client import Client

    services, url = served_with_auth
    bob = Client(url, auth=BOB, verbose=False)
    *_, status, _state_box = bob.predict(QUESTION, api_name="/ask")
    assert "Answered" in status
    alice = Client(url, auth=ALICE, verbose=False)
    alice.session_hash = bob.session_hash  # alice learned bob's session hash
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises several types for a refused join
        alice.predict("alice's reason", api_name="/rate_up")
    assert services.store.stats()["ratings_up"] == 0, "alice wrote into bob's chat state"
    alice_http = login(url, *ALICE)
    stream = alice_http.get("gradio_api/queue/data", params={"session_hash": bob.session_hash})
    assert stream.status_code == 403, "alice could listen to bob's session"
    assert "saved" in bob.predict("bob's own reason", api_name="/rate_up")  # bob's session still works


@pytest.fixture
def served_small_uploads(tiny_services: Services, users: object) -> Iterator[tuple[object, str]]:
    tiny_services.config = tiny_services.config.with_(max_file_mb=0.01)  # ~10 KB
    demo, url = launch(tiny_services, prevent_thread_lock=True, users=users)
    try:
        yield demo, url
    finally:
        demo.close()


def test_uploads_are_admin_only_and_size_capped(served_small_uploads: tuple[object, str]) -> None:
    demo, url = served_small_uploads
    small = {"files": ("note.md", b"# a note\n" * 10, "text/markdown")}
    big = b"x" * 200_000
    assert httpx.post(f"{url}gradio_api/upload", files=small, timeout=30).status_code == 401
    assert login(url, *BOB).post("gradio_api/upload", files=small).status_code == 403
    alice = login(url, *ALICE)
    assert alice.post("gradio_api/upload", files=small).status_code == 200
    assert (
        alice.post("gradio_api/upload", files={"files": ("big.md", big, "text/markdown")}).status_code == 413
    )

    def chunked() -> Iterator[bytes]:  # no Content-Length: Gradio's own max_file_size must stop it
        boundary = b"--b0undary"
        yield boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="big.md"\r\n\r\n'
        for _ in range(20):
            yield b"y" * 10_000
        yield b"\r\n" + boundary + b"--\r\n"

    response = alice.post(
        "gradio_api/upload",
        content=chunked(),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code >= 400, response.text
    assert demo.delete_cache == UPLOAD_CACHE_CLEANUP  # the upload cache is emptied of old files hourly


def test_uploads_are_closed_without_logins(tiny_services: Services) -> None:
    demo, url = launch(tiny_services, prevent_thread_lock=True)
    try:
        files = {"files": ("note.md", b"# a note\n", "text/markdown")}
        response = httpx.post(f"{url}gradio_api/upload", files=files, timeout=30)
        assert response.status_code == 403 and "ragqa ingest" in response.text
    finally:
        demo.close()
