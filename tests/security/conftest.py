"""A real `launch` of the app (tiny random Llama, hash embedder, 3 documents) with logins, for the access tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth import Users
from app.services import Services
from app.ui import launch
from tests.app.test_ui import tiny_services  # noqa: F401  (fixture)

ALICE = ("alice", "alice-password")  # admin
BOB = ("bob", "bob-password-1")  # user


@pytest.fixture
def users(ragqa_home: Path) -> Users:
    users = Users(ragqa_home / "users.json")
    users.add(*ALICE, "admin")
    users.add(*BOB, "user")
    return users


@pytest.fixture
def served_with_auth(tiny_services: Services, users: Users) -> Iterator[tuple[Services, str]]:  # noqa: F811
    demo, url = launch(tiny_services, prevent_thread_lock=True, users=users)
    try:
        yield tiny_services, url
    finally:
        demo.close()


def login(url: str, name: str, password: str) -> object:
    """An httpx client holding the login cookie (raises if the login is refused)."""
    import httpx

    client = httpx.Client(base_url=url, timeout=30)
    response = client.post("login", data={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return client
