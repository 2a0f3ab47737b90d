"""A long rating reason is saved (it was refused with a `client_token` error); over the documented limit it is
refused with a clear message. Over HTTP with gradio_client, as the chat sends it."""

from __future__ import annotations

from app.services import Services
from feedback_store.store import MAX_REASON_CHARS
from tests.app.test_ui import QUESTION
from tests.security.conftest import BOB


def test_long_reasons_are_saved_and_too_long_ones_refused_clearly(
    served_with_auth: tuple[Services, str],
) -> None:
    from gradio_client import Client

    services, url = served_with_auth
    bob = Client(url, auth=BOB, verbose=False)
    assert "Answered" in bob.predict(QUESTION, api_name="/ask")[3]
    reason = (
        "The answer cites the wrong passage and misses the date given in the second source. " * 6
    ).strip()
    assert 190 < len(reason) < MAX_REASON_CHARS
    first = bob.predict(reason, api_name="/rate_down")
    assert "saved" in first, first
    assert bob.predict(reason, api_name="/rate_down") == first  # a double submit records once
    too_long = "x" * (MAX_REASON_CHARS + 1)
    refused = bob.predict(too_long, api_name="/rate_down")
    assert "NOT saved" in refused and f"the limit is {MAX_REASON_CHARS}" in refused
    (record,) = list(services.store.iter_interactions())
    assert [r.reason for r in record.ratings] == [reason]
