from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.errors import InvalidConfigError
from retrieval.index import HybridIndex
from retrieval.ingest import ingest
from retrieval.retriever import Retriever, reciprocal_rank_fusion


def test_rrf_hand_computed() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k_rrf=60)
    expected = {
        "b": 1 / 62 + 1 / 61,  # rank 2 in the first list, rank 1 in the second
        "a": 1 / 61,
        "d": 1 / 62,
        "c": 1 / 63,
    }
    assert [doc for doc, _ in fused] == ["b", "a", "d", "c"]
    for doc, score in fused:
        assert score == pytest.approx(expected[doc])


def test_rrf_ties_keep_first_seen_order_and_small_k() -> None:
    fused = reciprocal_rank_fusion([["x", "y"], ["y", "x"]], k_rrf=1)
    assert [d for d, _ in fused] == ["x", "y"]  # equal scores 1/2 + 1/3
    assert fused[0][1] == pytest.approx(1 / 2 + 1 / 3)
    assert reciprocal_rank_fusion([]) == []


def test_search_ranks_and_scores(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    retriever = Retriever(HybridIndex.open(index_dir, embedder), embedder)
    passages = retriever.search("When does the ferry to Lutz Island leave?", k=2)
    assert [p.rank for p in passages] == [1, 2]
    assert passages[0].source == "guide/ferry.rst"
    assert "7:15" in passages[0].text
    assert passages[0].score >= passages[1].score > 0
    # Top of both lists: the fused score is 2 / (60 + 1).
    assert passages[0].score == pytest.approx(2 / 61)
    assert set(retriever.last_timings_ms) == {"embed", "dense", "bm25", "fusion", "total"}
    assert retriever.search("   ") == []
    with pytest.raises(InvalidConfigError):
        retriever.search("ferry", k=0)


def test_rare_term_found_by_bm25_part(docs_root: Path, index_dir: Path, embedder) -> None:
    ingest(docs_root, index_dir, embedder, progress=False)
    retriever = Retriever(HybridIndex.open(index_dir, embedder), embedder)
    assert retriever.search("Orvane", k=1)[0].source == "guide/tea.txt"
    assert retriever.search("1743", k=1)[0].source == "volcano.md"
