"""Hybrid search: dense (FAISS) and lexical (BM25) candidates fused by reciprocal rank.

Why RRF: cosine and BM25 scores live on unrelated scales; fusing ranks needs no calibration, and a
passage that both retrievers like rises to the top. Dense catches paraphrases, BM25 catches rare
exact terms (names, error codes, numbers) that small embedders blur.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from retrieval.embedder import Embedder
from retrieval.errors import InvalidConfigError
from retrieval.index import HybridIndex, check_embedder
from retrieval.types import Passage

K_RRF = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k_rrf: int = K_RRF) -> list[tuple[str, float]]:
    """Fuse ranked id lists: score(d) = sum over lists containing d of 1 / (k_rrf + rank), rank 1-based.

    Returns (id, score) best first; ties keep the order in which ids were first met (earlier lists,
    better ranks first), so results are deterministic.
    """
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc_id in enumerate(ranking, start=1):
            scores[doc_id] = scores.get(doc_id, 0.0) + 1.0 / (k_rrf + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])  # sorted() is stable


class Retriever:
    """`search(question, k)` -> the k best passages, ranked 1..k, with fused scores.

    After each search `last_timings_ms` holds {"embed", "dense", "bm25", "fusion", "total"}.
    """

    def __init__(self, index: HybridIndex, embedder: Embedder, k_rrf: int = K_RRF) -> None:
        """`embedder` must be the one that built `index` (checked: IndexMismatchError otherwise)."""
        if embedder is not None:
            check_embedder(index.meta, embedder.name, int(embedder.dim), index.path or "memory")
        self.index = index
        self.embedder = embedder
        self.k_rrf = k_rrf
        self.last_timings_ms: dict[str, float] = {}

    def search(self, query: str, k: int = 4) -> list[Passage]:
        if k < 1:
            raise InvalidConfigError(f"k must be >= 1, got {k}")
        if not query.strip() or len(self.index) == 0:
            self.last_timings_ms = {"embed": 0.0, "dense": 0.0, "bm25": 0.0, "fusion": 0.0, "total": 0.0}
            return []
        t0 = time.perf_counter()
        query_vector = self.embedder.encode_query(query)
        embed_ms = (time.perf_counter() - t0) * 1000
        passages = self.search_with_vector(query, query_vector, k)
        self.last_timings_ms["embed"] = embed_ms
        self.last_timings_ms["total"] += embed_ms
        return passages

    def search_with_vector(self, query: str, query_vector: np.ndarray, k: int = 4) -> list[Passage]:
        """Like `search` with the query already embedded ((dim,) float32 unit vector); for benchmarks
        and callers that batch query embedding. Timings exclude embedding ("embed" = 0)."""
        n = max(k * 5, 20)
        t0 = time.perf_counter()
        dense = self.index.dense_search(query_vector, n)
        t1 = time.perf_counter()
        lexical = self.index.bm25_search(query, n)
        t2 = time.perf_counter()
        chunks = self.index.chunks
        fused = reciprocal_rank_fusion(
            [[chunks[r].chunk_id for r, _ in dense], [chunks[r].chunk_id for r, _ in lexical]], self.k_rrf
        )[:k]
        passages = []
        for rank, (cid, score) in enumerate(fused, start=1):
            c = chunks[self.index.row_of(cid)]
            passages.append(Passage(rank=rank, chunk_id=cid, source=c.source, text=c.text, score=score))
        t3 = time.perf_counter()
        self.last_timings_ms = {
            "embed": 0.0,
            "dense": (t1 - t0) * 1000,
            "bm25": (t2 - t1) * 1000,
            "fusion": (t3 - t2) * 1000,
            "total": (t3 - t0) * 1000,
        }
        return passages
