"""Turn untrusted text (documents, model answers, file names) into inert Markdown for the UI.

Documents and answers may contain HTML, `javascript:` links or Markdown images pointing at outside URLs (a known
data-exfiltration trick: the browser fetches the image URL with data in it). Everything is shown as text, by
escaping rather than by a list of known attacks, because Markdown has many link forms (inline, reference-style
`![a][1]` + `[1]: //evil/leak?d=...`, `<angle>` autolinks, GFM's bare `www.` / `https://` / e-mail autolinks, raw
HTML):
  - every `[`, `]`, backtick, backslash, `*`, `_` and `~` is backslash-escaped and `& < >` are HTML-escaped, so no link, image,
    reference definition, code span or HTML tag can start in the text;
  - every word that a GFM autolinker could turn into a link (contains `://`, `www.`, a URL scheme or an e-mail
    address) is shown as inline code, which is never linked;
  - block syntax at the start of a line (headings, lists, rules, tables, setext underlines) is escaped.
"""

from __future__ import annotations

import html
import re

# Words a Markdown renderer with GFM autolinks could make clickable or fetchable.
_LINKABLE = re.compile(
    r"://|www\.|(?:javascript|vbscript|data|file|mailto|xmpp|tel|ftp|https?):|[\w.+-]@[\w-]+\.\w",
    re.IGNORECASE,
)
_ESCAPE = re.compile(r"([\\`\[\]*_~])")  # also emphasis: what shows is what was written
_BLOCK_MARK = re.compile(r"^(?:[#*+\-=|~_]|(\d+)([.)]))")
_TOKENS = re.compile(r"(\s+)")
_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)


def inert_markdown(text: str) -> str:
    """Markdown that renders as exactly the visible words of `text`: no HTML, links, images or blocks."""
    out: list[str] = []
    line_start = True
    # CommonMark ends a line at \r and \r\n too: one kind of line end, so the block escapes see every line start
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Leading indentation would make an indented code block, where the escapes below would show.
    for token in _TOKENS.split(_INDENT.sub("", text)):
        if not token:
            continue
        if token.isspace():
            out.append(token)
            line_start = line_start or "\n" in token
            continue
        out.append(_code_span(token) if _LINKABLE.search(token) else _plain(token, line_start))
        line_start = False
    return "".join(out)


def _plain(word: str, line_start: bool) -> str:
    word = html.escape(_ESCAPE.sub(r"\\\1", word), quote=False)
    if line_start:  # "# h", "- item", "1. item", "---", "|a|": text, not blocks
        word = _BLOCK_MARK.sub(
            lambda m: f"{m.group(1)}\\{m.group(2)}" if m.group(1) else f"\\{m.group(0)}", word
        )
    return word


def _code_span(word: str) -> str:
    """`word` as inline code; the fence is longer than any backtick run inside, as CommonMark allows."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", word)), default=0) + 1)
    return f"{fence} {word} {fence}"


def inert_html(text: str) -> str:
    """HTML text (for inside our own HTML blocks, where no Markdown is read): `& < >` escaped, and every word a
    renderer could autolink shown as inline code, as inert_markdown does."""
    return "".join(
        token
        if token.isspace()
        else f"<code>{html.escape(token)}</code>"
        if _LINKABLE.search(token)
        else html.escape(token)
        for token in _TOKENS.split(text)
        if token
    )


def snippet(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"
