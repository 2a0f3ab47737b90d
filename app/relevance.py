"""How close each passage shown is to the question: the dense cosine, which users can read as a relevance.

The retriever ranks by reciprocal-rank fusion, whose values (~0.016) say nothing to a reader; the cosine between
the question's embedding and the passage's stored vector (both normalised) does. It is computed from the index's
stored vectors, so only the question is embedded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def dense_relevance(index: Any, embedder: Any, question: str, passages: Sequence[Any]) -> dict[int, float]:
    """{passage rank: cosine} for the passages found in `index` (a HybridIndex); {} when none are."""
    rows = {c.chunk_id: i for i, c in enumerate(index.chunks)}
    wanted = [(p.rank, rows[p.chunk_id]) for p in passages if p.chunk_id in rows]
    if not wanted:
        return {}
    query = np.asarray(embedder.encode_query(question), dtype=np.float32).reshape(-1)
    vectors = np.asarray(index.vectors[[row for _rank, row in wanted]], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
    cosines = vectors @ query / np.where(norms == 0, 1.0, norms)
    return {rank: float(c) for (rank, _row), c in zip(wanted, cosines, strict=True)}
