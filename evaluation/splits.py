"""Seeded train / held-out splits of the public QA data, shared by the loop experiment and the starter.

Split by ARTICLE, never by question: questions of one article share passages, so a question-level split would
leak the held-out passages into training. The starter adapter and the loop benchmark must agree on the split
(same seed, same count) so neither is ever evaluated on an article it was trained on.
"""

from __future__ import annotations

import random
from typing import Any

# The split every committed result uses: 4 of squad2-dev-half's 16 articles held out, seed 0.
HELDOUT_ARTICLES = 4
SPLIT_SEED = 0


def split_articles(squad: dict[str, Any], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training titles, held-out titles): a seeded shuffle of the article titles, `heldout` of them held out."""
    titles = sorted(a["title"] for a in squad["data"])
    if not 0 < heldout < len(titles):
        raise ValueError(f"the held-out article count must be between 1 and {len(titles) - 1}, got {heldout}")
    random.Random(seed).shuffle(titles)
    return sorted(titles[heldout:]), sorted(titles[:heldout])


def subset_squad(squad: dict[str, Any], titles: list[str], answerable_only: bool = False) -> dict[str, Any]:
    """The SQuAD file restricted to `titles` (and to answerable questions when asked)."""
    keep = set(titles)
    data = []
    for article in squad["data"]:
        if article["title"] not in keep:
            continue
        paragraphs = []
        for p in article["paragraphs"]:
            qas = [q for q in p["qas"] if not (answerable_only and q.get("is_impossible"))]
            if qas:
                paragraphs.append({**p, "qas": qas})
        data.append({**article, "paragraphs": paragraphs})
    return {"version": squad.get("version", "v2.0"), "data": data}
