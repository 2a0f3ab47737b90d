"""Waiting for a line of the page, and saying what the page showed instead when it never comes.

A timeout alone ("locator.wait_for: Timeout 30000ms exceeded") does not tell a flake from a wrong status message;
so the page's status lines (those starting with ✅, ⚠️ or ❌) go into the error and a full-page screenshot into
test-artifacts/browser/timeouts/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser" / "timeouts"
STATUS_LINE = re.compile(r"^\s*(✅|⚠️|❌)")


def wait_for_text(page: object, pattern: str, *, last: bool = False) -> str:
    """Wait for text matching `pattern` (the first match, or the last with `last`); return its text."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    matches = page.get_by_text(re.compile(pattern))
    found = matches.last if last else matches.first
    try:
        found.wait_for()
    except PlaywrightTimeout as e:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{abs(hash(pattern)) % 10**6}.png"
        page.screenshot(path=shot, full_page=True)
        shown = [t.strip() for t in page.get_by_text(STATUS_LINE).all_inner_texts()]
        raise AssertionError(
            f"nothing matching {pattern!r} appeared; the page's status lines: {shown}; screenshot {shot}"
        ) from e
    return found.inner_text()
