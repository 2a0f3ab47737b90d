"""The loop benchmark's data split: held-out articles never reach training; shared contexts leave xquad."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.loop import split_articles, subset_squad, xquad_minus


def test_article_split_is_seeded_and_disjoint(fixtures_dir: Path) -> None:
    squad = json.loads((fixtures_dir / "squad_v2.json").read_text())
    train, heldout = split_articles(squad, 1, seed=0)
    assert split_articles(squad, 1, seed=0) == (train, heldout)
    assert sorted(train + heldout) == ["Normans", "Steam engine"] and not set(train) & set(heldout)
    answerable = subset_squad(squad, ["Normans"], answerable_only=True)
    qids = [q["id"] for a in answerable["data"] for p in a["paragraphs"] for q in p["qas"]]
    assert qids == ["q1", "q2", "q4"]  # q3 is unanswerable; Steam engine is not in the subset


def test_xquad_minus_drops_contexts_shared_with_squad2(fixtures_dir: Path) -> None:
    squad = json.loads((fixtures_dir / "squad_v2.json").read_text())
    shared = squad["data"][0]["paragraphs"][0]
    xquad = {
        "data": [
            {"title": "Normans", "paragraphs": [{"context": shared["context"] + " ", "qas": []}]},
            {"title": "Other", "paragraphs": [{"context": "Something else entirely.", "qas": []}]},
        ]
    }
    kept, removed = xquad_minus(xquad, squad)
    assert removed == 1
    assert [a["title"] for a in kept["data"]] == ["Other"]
