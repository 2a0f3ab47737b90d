"""Logins end when the users file says so: removed users, changed passwords and roles, and expired sessions.

A real server (app.ui.launch) and real HTTP; the users file is changed by `ragqa users ...` (app.cli.main) as an
admin would, while the server runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from app.cli import main
from app.services import Services
from app.ui import launch
from tests.security.conftest import ALICE, BOB, login


def _status(client: httpx.Client) -> int:
    return client.get("config").status_code


def _users_cli(monkeypatch: pytest.MonkeyPatch, *argv: str, password: str | None = None) -> None:
    if password is not None:
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO(password + "\n"))
    assert main(["users", *argv]) == 0


def test_removed_user_is_logged_out_and_cannot_log_in(
    served_with_auth: tuple[Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _services, url = served_with_auth
    bob = login(url, *BOB)
    assert _status(bob) == 200
    _users_cli(monkeypatch, "remove", "bob")
    assert _status(bob) == 401, "the removed user's cookie still works"
    again = httpx.post(f"{url}login", data={"username": BOB[0], "password": BOB[1]}, timeout=30)
    assert again.status_code == 400


def test_password_change_ends_sessions_and_takes_effect(
    served_with_auth: tuple[Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _services, url = served_with_auth
    bob = login(url, *BOB)
    _users_cli(monkeypatch, "add", "bob", "--password-stdin", password="bob-new-password")
    assert _status(bob) == 401, "a session made with the old password survived the change"
    old = httpx.post(f"{url}login", data={"username": "bob", "password": BOB[1]}, timeout=30)
    assert old.status_code == 400
    assert _status(login(url, "bob", "bob-new-password")) == 200


def test_demoted_admin_loses_admin_views(
    served_with_auth: tuple[Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradio_client import Client

    _services, url = served_with_auth
    alice = login(url, *ALICE)
    assert "interactions" in Client(url, auth=ALICE, verbose=False).predict(api_name="/stats")
    _users_cli(monkeypatch, "add", "alice", "--role", "user", "--password-stdin", password=ALICE[1])
    assert _status(alice) == 401, "the admin session outlived the role change"
    assert "only admins" in Client(url, auth=ALICE, verbose=False).predict(api_name="/stats")


@pytest.fixture
def served_short_sessions(tiny_services: Services, users: object) -> Iterator[str]:
    tiny_services.config = tiny_services.config.with_(session_ttl_hours=2.0 / 3600)  # 2 s
    demo, url = launch(tiny_services, prevent_thread_lock=True, users=users)
    try:
        yield url
    finally:
        demo.close()


def test_sessions_expire_after_session_ttl_hours(served_short_sessions: str) -> None:
    bob = login(served_short_sessions, *BOB)
    assert _status(bob) == 200
    time.sleep(2.5)
    assert _status(bob) == 401
    assert _status(login(served_short_sessions, *BOB)) == 200


def test_logout_ends_every_session_of_the_user(served_with_auth: tuple[Services, str]) -> None:
    _services, url = served_with_auth
    laptop, phone, alice = login(url, *BOB), login(url, *BOB), login(url, *ALICE)
    assert laptop.get("logout", follow_redirects=False).status_code == 302
    assert _status(laptop) == 401 and _status(phone) == 401
    assert _status(alice) == 200
