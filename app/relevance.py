"""How close the passages found are to the question, per sentence: what users read and what the relevance gate
checks.

The retriever ranks by reciprocal-rank fusion, whose values (~0.016) say nothing to a reader; a cosine does. Per
sentence, not per chunk: a user's short question ("How do I install the app?") matches the one sentence that
answers it far better than a 200-token chunk that also covers three other things. `passage_relevance` gives each
passage's best sentence (the sources pane's "relevance n%"), `sentence_relevance` the best of them all (the
relevance gate's score, app/qa.py), so the two read on one scale.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np


def passage_relevance(embedder: Any, question: str, passages: Sequence[Any]) -> dict[int, float]:
    """{passage rank: the best cosine between `question` and one of its sentences}; a passage without a sentence
    of MIN_SENTENCE_WORDS words has none."""
    if not question.strip():
        return {}
    query = _unit(np.asarray(embedder.encode_query(question), dtype=np.float32).reshape(-1))
    out = {}
    for p in passages:
        vectors = sentence_vectors(embedder, p.text)
        if len(vectors):
            out[p.rank] = float((vectors @ query).max())
    return out


# Sentences shorter than this carry no topic of their own (a heading's "Usage", a table's "| k | 4 |" cell run).
MIN_SENTENCE_WORDS = 3


def sentence_relevance(embedder: Any, readings: Sequence[str], passages: Sequence[Any]) -> float:
    """The relevance gate's score: the highest cosine between any reading of the question and any sentence of the
    passages found; -inf when there is no sentence to compare (never gated then). On the bundled guide the chunk
    cosine of on-topic questions (0.22-0.64) overlapped trivia's (0.02-0.25); the sentence cosine keeps them apart
    (on-topic >= 0.34, trivia <= 0.21)."""
    texts = [r for r in dict.fromkeys(readings) if r.strip()]
    vectors = [np.asarray(embedder.encode_query(t), dtype=np.float32) for t in texts]
    return best_sentence_cosine(embedder, vectors, passages)


def best_sentence_cosine(
    embedder: Any, query_vectors: Sequence[np.ndarray], passages: Sequence[Any]
) -> float:
    """`sentence_relevance` for readings already embedded (the app's search embedded them); -inf without both."""
    sentences = [v for p in passages for v in [sentence_vectors(embedder, p.text)] if len(v)]
    if not sentences or not query_vectors:
        return float("-inf")
    queries = _unit(np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in query_vectors]))
    return float((queries @ np.concatenate(sentences).T).max())


def sentence_vectors(embedder: Any, text: str) -> np.ndarray:
    """Unit vectors of `text`'s sentences of MIN_SENTENCE_WORDS words or more, (n, dim); n may be 0."""
    return _SENTENCES.vectors(embedder, text)


class _SentenceVectors:
    """Unit vectors of a passage's sentences, kept per (embedder, passage text) for the most recent passages.

    Embedding a passage's ~8 sentences costs ~25 ms on one core (MiniLM, 2-core Zen 4, bf16); the same passages
    come back for the questions of one folder, so most questions after the first few pay only their own query.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def vectors(self, embedder: Any, text: str) -> np.ndarray:
        from retrieval.passage_trim import split_sentences

        key = (str(getattr(embedder, "name", id(embedder))), hashlib.sha1(text.encode("utf-8")).hexdigest())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        sentences = [s for s in split_sentences(text) if len(s.split()) >= MIN_SENTENCE_WORDS]
        # Small batches: sentence-transformers pads a batch to its longest sentence (one batch of 31 sentences
        # took 204 ms, batches of 8 sorted by length 94 ms).
        out = (
            _unit(np.asarray(embedder.encode(sentences, batch_size=8), dtype=np.float32))
            if sentences
            else _EMPTY
        )
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return out


_EMPTY = np.zeros((0, 1), dtype=np.float32)
_SENTENCES = _SentenceVectors()


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)
