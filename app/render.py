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


# Markdown block syntax at the start of a line: headings, quotes, lists, rules, tables, fences, setext underlines.
# (">" needs nothing: html.escape turns it into "&gt;", which Markdown does not read as a quote.)
_BLOCK_START = re.compile(r"^(\s*)(?:([#*+\-=|`~_])|(\d+)([.)]))", re.MULTILINE)


def inert_markdown(text: str) -> str:
    """Escape HTML and defuse Markdown links/images and block syntax, keeping the visible words."""
    text = _BLOCK_START.sub(_escape_block, text)
    text = _AUTOLINK.sub(lambda m: m.group(0)[1:-1], text)
    text = _MD_IMAGE_OR_LINK.sub(lambda m: f"{m.group(1)} ({m.group(2)})", text)
    text = html.escape(text, quote=False)
    # Bare URLs are shown as code so Markdown does not turn them into links.
    return re.sub(r"\b((?:https?|javascript|data|file|ftp):[^\s)]+)", r"`\1`", text, flags=re.IGNORECASE)


def _escape_block(m: re.Match[str]) -> str:
    if m.group(2):
        return f"{m.group(1)}\\{m.group(2)}"
    return f"{m.group(1)}{m.group(3)}\\{m.group(4)}"  # "1." -> "1\." : no ordered list


def snippet(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
