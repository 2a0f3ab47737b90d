"""What the chat shows, as Markdown: answers with their sources, the sources panel, the start page.

Everything from documents or the model goes through app.render.inert_markdown first; the only markup added here
is our own (<details> for a passage that opens on click, <sub> for notes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from app.render import inert_markdown, snippet

_HEADING = re.compile(r"^\s*#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def relevance_label(cosine: float | None) -> str:
    """The dense cosine as a percentage people read as "how close to the question" (RRF values mean nothing)."""
    return "" if cosine is None else f" · relevance {max(0.0, cosine) * 100:.0f}%"


def passage_details(p: Any, relevance: dict[int, float], cited: Sequence[int]) -> str:
    """[n] source · relevance, which opens on click to show the full passage."""
    mark = " · cited" if p.rank in cited else ""
    summary = f"[{p.rank}] {inert_markdown(p.source)}{relevance_label(relevance.get(p.rank))}{mark}"
    body = inert_markdown(p.text).replace("\n", "<br>")
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


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
