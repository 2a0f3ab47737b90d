"""Access over HTTP: logins required when users exist, roles enforced server-side, feedback attributed, rate limit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.auth import Users
from app.services import Services
from app.ui import launch
from feedback_store.export import export_snapshot
from tests.app.test_ui import QUESTION, tiny_services  # noqa: F401  (fixture)


@pytest.fixture
def users(tmp_path: Path) -> Users:
    users = Users(tmp_path / "users.json")
    users.add("alice", "alice-password", "admin")
    users.add("bob", "bob-password-1", "user")
    return users


@pytest.fixture
def served_with_auth(tiny_services: Services, users: Users) -> Iterator[tuple[Services, str]]:  # noqa: F811
    demo, url = launch(tiny_services, prevent_thread_lock=True, users=users)
    try:
        yield tiny_services, url
    finally:
        demo.close()


def test_unauthenticated_access_is_refused(served_with_auth: tuple[Services, str]) -> None:
    from gradio_client import Client

    _services, url = served_with_auth
    # The API's config and the event endpoints need a login cookie.
    assert httpx.get(f"{url}config", timeout=10).status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - gradio_client raises several types for a refused login
        Client(url, verbose=False)
    with pytest.raises(Exception):  # noqa: B017
        Client(url, auth=("bob", "wrong-password"), verbose=False)


def test_roles_and_attribution(served_with_auth: tuple[Services, str]) -> None:
    from gradio_client import Client

    services, url = served_with_auth
    bob = Client(url, auth=("bob", "bob-password-1"), verbose=False)
    chat, _sources, _model, status, *_ = bob.predict(QUESTION, api_name="/ask")
    assert "Answered" in status
    assert "only admins" in bob.predict(api_name="/stats")
    assert "only admins" in bob.predict("v0001", api_name="/rollback")
    assert "only admins" in bob.predict([], api_name="/add_documents")[0]
    bob.predict(api_name="/regenerate")
    assert "saved" in bob.predict("Both are bad", api_name="/prefer")[1]

    alice = Client(url, auth=("alice", "alice-password"), verbose=False)
    stats = alice.predict(api_name="/stats")
    assert "only admins" not in stats and "interactions" in stats
    assert "v0001" in alice.predict(api_name="/versions")

    # Bob's interaction and rating are his, in the store and in the export.
    record = next(services.store.iter_interactions())
    assert record.user == "bob"
    out = services.config.paths.home / "exp"
    export_snapshot(services.store, out, test_fraction=0.0)
    rows = [json.loads(line) for line in (out / "unpaired.train.jsonl").read_text().splitlines()]
    # "Both bad" on the answer and its regeneration: a label-false row for each (one if their texts are equal).
    distinct = len({" ".join(c.text.split()) for c in record.candidates})
    assert [(r["label"], r["meta"]["user"], r["meta"]["source"]) for r in rows] == [
        (False, "bob", "both_bad")
    ] * distinct


def test_rate_limit_is_a_clear_message(tiny_services: Services) -> None:  # noqa: F811
    from app.ui import Handlers, new_state

    services = tiny_services
    handlers = Handlers(services)
    handlers.limiter.burst = 1.0
    handlers.limiter.rate = 1 / 3600
    state = new_state()
    list(handlers.ask(QUESTION, state, user="carol"))
    *_, last = list(handlers.ask(QUESTION, state, user="carol"))
    assert "too many questions" in last[3]
    *_, other = list(handlers.ask(QUESTION, new_state(), user="dave"))
    assert "too many" not in other[3]
