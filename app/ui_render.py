"""What the chat shows, as Markdown: answers with their sources, the sources panel, the start page.

Everything from documents or the model goes through app.render.inert_markdown first; the only markup added here
is our own (<details> for a passage that opens on click, <sub> for notes, <table> for a Markdown table in a passage,
its cells HTML-escaped).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from app.render import inert_html, inert_markdown, snippet

_HEADING = re.compile(r"^\s*#{1,6}\s+(.+?)\s*$", re.MULTILINE)
# A GFM table: a row of cells between pipes, then a rule row of dashes (optionally with alignment colons).
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE_SPAN = re.compile(r"`([^`]+)`")


def relevance_label(cosine: float | None) -> str:
    """The dense cosine as a percentage people read as "how close to the question" (RRF values mean nothing)."""
    return "" if cosine is None else f" · relevance {max(0.0, cosine) * 100:.0f}%"


def passage_details(p: Any, relevance: dict[int, float], cited: Sequence[int]) -> str:
    """[n] source · relevance, which opens on click to show the full passage."""
    mark = " · cited" if p.rank in cited else ""
    summary = f"[{p.rank}] {inert_markdown(p.source)}{relevance_label(relevance.get(p.rank))}{mark}"
    return f"<details><summary>{summary}</summary>\n\n{passage_body(p.text)}\n\n</details>"


def passage_body(text: str) -> str:
    """A passage as its reader wrote it: Markdown tables (the settings tables of READMEs and of the user guide)
    as HTML tables, everything else inert text with its line breaks. Blocks are separated by blank lines, so each
    table is an HTML block and each stretch of text a paragraph."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        body = inert_markdown("\n".join(prose)).strip()
        if body:
            blocks.append(body.replace("\n", "<br>"))
        prose.clear()

    i = 0
    while i < len(lines):
        end = i
        while end < len(lines) and _TABLE_ROW.match(lines[end]):
            end += 1
        rows = lines[i:end]
        if len(rows) > 1 and _TABLE_RULE.match(rows[1]):  # a header row and its rule
            header, body = _cells(rows[0]), rows[2:]
        elif len(rows) > 1 and i == 0:
            # The passage begins inside a table (chunks are cut between rows): its rows, without the header.
            header, body = None, [line for line in rows if not _TABLE_RULE.match(line)]
        else:
            prose.append(lines[i])
            i += 1
            continue
        flush()
        blocks.append(_table_html([_cells(line) for line in body], header))
        i = end
    flush()
    return "\n\n".join(blocks)


def _cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(inner)]


def _cell_html(cell: str) -> str:
    """Escaped text (app.render.inert_html); `code` spans as <code>, their text escaped too. Inside an HTML block
    no Markdown is read, so nothing in a cell can become a link, an image or a tag."""
    parts = _CODE_SPAN.split(cell)  # the captured code spans are the odd parts
    return "".join(
        f"<code>{html.escape(part)}</code>" if i % 2 else inert_html(part)
        for i, part in enumerate(parts)
        if part
    )


def _table_html(rows: list[list[str]], header: list[str] | None = None) -> str:
    """One line of HTML (a blank line would end the HTML block); the class is styled by app.ui.PAGE_CSS."""

    def row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{_cell_html(c)}</{tag}>" for c in cells) + "</tr>"

    head = f"<thead>{row(header, 'th')}</thead>" if header is not None else ""
    body = "".join(row(r, "td") for r in rows)
    return f'<table class="source-table">{head}<tbody>{body}</tbody></table>'


def sources_markdown(
    passages: Sequence[Any], cited: Sequence[int], mode: str, relevance: dict[int, float] | None = None
) -> str:
    """The side panel: every passage shown to the model, its relevance, and whether the answer cites it."""
    if not passages:
        return "_No sources yet._"
    relevance = relevance or {}
    lines = []
    for p in passages:
        mark = " · **cited**" if p.rank in cited else ""
        if p.rank in cited and mode == "inferred":
            mark = " · **cited (inferred)**"
        lines.append(
            f"**[{p.rank}] {inert_markdown(p.source)}**{relevance_label(relevance.get(p.rank))}{mark}"
            f"\n\n> {inert_markdown(snippet(p.text))}"
        )
    return "\n\n".join(lines)


def answer_markdown(
    text: str,
    passages: Sequence[Any],
    cited: Sequence[int],
    mode: str,
    relevance: dict[int, float] | None = None,
    finished: bool = True,
) -> str:
    """One answer bubble: the answer, then its sources as [n] entries that open to the full passage."""
    out = inert_markdown(text) or "_(empty answer)_"
    if not finished:
        out += "\n\n<sub>(cut at the length or time limit)</sub>"
    shown = [p for p in passages if p.rank in cited] or list(passages)
    if shown:
        title = "Sources" + (" (matched by wording)" if mode == "inferred" else "")
        if not cited:
            title = "Passages searched (the answer cites none)"
        out += f"\n\n<sub>{title}:</sub>\n\n" + "\n".join(
            passage_details(p, relevance or {}, cited) for p in shown
        )
    return out


def document_title(source: str, first_text: str) -> str:
    """A document's heading if its first chunk starts with one, else its file name in words."""
    found = _HEADING.search(first_text[:300])
    if found:
        return found.group(1).strip()
    return PurePosixPath(source).stem.replace("_", " ").replace("-", " ").strip() or source


def example_questions(titles: Sequence[str], limit: int = 3) -> list[str]:
    return [f"Tell me about {t}" for t in list(titles)[:limit]]


def start_page_markdown(documents: Sequence[tuple[str, str]], limit: int = 12) -> str:
    """What an empty chat shows: what can be asked about (the indexed documents) and how feedback works."""
    if not documents:
        return (
            "### Nothing to ask about yet\n\nNo documents are indexed: an admin can add some below "
            "(Admin → Add documents) or run `ragqa ingest FOLDER`."
        )
    shown = "\n".join(f"- **{inert_markdown(t)}** · {inert_markdown(s)}" for s, t in documents[:limit])
    more = f"\n- … and {len(documents) - limit} more" if len(documents) > limit else ""
    return (
        f"### Ask your documents\n\n{len(documents)} document(s) indexed:\n\n{shown}{more}\n\n"
        "Rate an answer with 👍 / 👎 under it, or regenerate it and pick the better one: "
        "that feedback trains the next model."
    )
