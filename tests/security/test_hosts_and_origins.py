"""No DNS rebinding, no cross-site posts, and without logins no admin actions from the web (real server, real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.auth import Users, check_bind
from app.services import Services
from app.ui import launch
from tests.security.conftest import ALICE

REBIND = "rebind.attacker.example"


@pytest.fixture
def served_no_login(tiny_services: Services) -> Iterator[tuple[Services, str]]:
    tiny_services.config = tiny_services.config.with_(allowed_hosts=("qa.example.org",))
    demo, url = launch(tiny_services, prevent_thread_lock=True)
    try:
        yield tiny_services, url
    finally:
        demo.close()


def _port(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def test_only_trusted_host_names_are_served(served_no_login: tuple[Services, str]) -> None:
    _services, url = served_no_login
    port = _port(url)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"qa.example.org:{port}", "QA.Example.org."):
        assert httpx.get(f"{url}config", headers={"Host": host}, timeout=10).status_code == 200, host
    for host in (f"{REBIND}:{port}", "127.0.0.1.nip.io", "evil.localhost.example", ""):
        response = httpx.get(f"{url}config", headers={"Host": host}, timeout=10)
        assert response.status_code == 400, host
        assert "allowed_hosts" in response.text


def test_dns_rebinding_page_cannot_read_or_roll_back(served_no_login: tuple[Services, str]) -> None:
    services, url = served_no_login
    port = _port(url)
    before = services.qa.registry.current_name()
    page = {"Host": f"{REBIND}:{port}", "Origin": f"http://{REBIND}:{port}"}
    for api in ("stats", "rollback", "ask"):
        response = httpx.post(
            f"{url}gradio_api/call/{api}", json={"data": ["v0001"]}, headers=page, timeout=10
        )
        # Gradio's CORS layer (outside ours) may still echo the origin: the 400 carries nothing but the refusal.
        assert response.status_code == 400, (api, response.text)
        assert set(response.json()) == {"detail"} and "not served here" in response.json()["detail"]
    assert httpx.get(f"{url}config", headers=page, timeout=10).status_code == 400
    assert services.qa.registry.current_name() == before


def test_state_changing_calls_need_same_origin(served_no_login: tuple[Services, str]) -> None:
    _services, url = served_no_login
    port = _port(url)
    call = f"{url}gradio_api/call/stats"
    for origin in ("http://evil.example", f"http://localhost:{port + 1}", "null", f"http://{REBIND}:{port}"):
        response = httpx.post(call, json={"data": []}, headers={"Origin": origin}, timeout=10)
        assert response.status_code == 403, origin
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", "https://qa.example.org"):
        response = httpx.post(call, json={"data": []}, headers={"Origin": origin}, timeout=10)
        assert response.status_code == 200, (origin, response.text)
    assert httpx.post(call, json={"data": []}, timeout=10).status_code == 200  # no Origin: not a browser


def test_without_logins_admin_actions_are_command_line_only(served_no_login: tuple[Services, str]) -> None:
    from gradio_client import Client

    services, url = served_no_login
    client = Client(url, verbose=False)
    assert "ragqa feedback stats" in client.predict(api_name="/stats")
    assert "only admins" in client.predict(api_name="/versions")
    before = services.qa.registry.current_name()
    assert "ragqa models rollback" in client.predict("v0001", api_name="/rollback")
    assert services.qa.registry.current_name() == before


def test_admin_actions_work_for_admins_with_logins(served_with_auth: tuple[Services, str]) -> None:
    from gradio_client import Client

    _services, url = served_with_auth
    assert "interactions" in Client(url, auth=ALICE, verbose=False).predict(api_name="/stats")


def test_insecure_warning_says_what_is_open(tmp_path: object) -> None:
    warning = check_bind("0.0.0.0", Users(tmp_path / "users.json"), insecure=True)  # type: ignore[operator]
    for words in ("WITHOUT authentication", "asking questions", "every indexed document", "writing feedback"):
        assert words in warning
    assert "NOT open: admin actions" in warning and "allowed_hosts" in warning
