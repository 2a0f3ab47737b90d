"""Turn untrusted text (documents, model answers) into inert Markdown for the UI.

Documents and answers may contain HTML, `javascript:` links or Markdown images pointing at outside URLs (a known
data-exfiltration trick: the browser fetches the image URL with data in it). Everything is shown as text: HTML is
escaped, and Markdown links and images are defused so nothing is fetched or clickable.
"""

from __future__ import annotations

import html
import re

_MD_IMAGE_OR_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)]*)\)")
_AUTOLINK = re.compile(r"<(?:https?|javascript|data|file|ftp):[^>]*>", re.IGNORECASE)


def inert_markdown(text: str) -> str:
    """Escape HTML and defuse Markdown links/images, keeping the visible words."""
    text = _AUTOLINK.sub(lambda m: m.group(0)[1:-1], text)
    text = _MD_IMAGE_OR_LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)
    text = html.escape(text, quote=False)
    # Bare URLs are shown as code so Markdown does not turn them into links.
    return re.sub(r"\b((?:https?|javascript|data|file|ftp):[^\s)]+)", r"`\1`", text, flags=re.IGNORECASE)


def snippet(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
