from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.embedder import DEFAULT_MODEL_NAME, Embedder, HashEmbedder, SentenceTransformerEmbedder
from retrieval.errors import EmbedderError
from retrieval.index import HybridIndex
from retrieval.ingest import ingest
from retrieval.retriever import Retriever


def test_hash_embedder_contract() -> None:
    e = HashEmbedder(dim=32)
    assert isinstance(e, Embedder)
    v = e.encode(["red apple pie", "red apple pie", "quantum tunnelling"])
    assert v.shape == (3, 32) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert np.array_equal(v[0], v[1])
    assert np.allclose(e.encode_query("red apple pie"), v[0])
    assert float(v[0] @ e.encode_query("apple pie recipe")) > float(v[2] @ e.encode_query("apple pie recipe"))
    assert e.tokenize_offsets(" ab  c\nd ") == [(1, 3), (5, 6), (7, 8)]
    assert e.encode([]).shape == (0, 32)
    assert e.name != DEFAULT_MODEL_NAME


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="not found"):
        SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))


FACTS = {
    "zoo.md": "The Varnholt city zoo keeps two snow leopards named Ilka and Tove in its mountain enclosure.",
    "bakery.txt": "Pellworth Bakery opens at six in the morning and is famous for its cardamom buns.",
    "rocket.md": "The Aurex-3 rocket reached an altitude of 412 kilometres on its maiden flight in March.",
    "library.html": "<html><body><p>The Ostmere public library lends telescopes to members for two weeks."
    "</p><script>var x = 'telescope';</script></body></html>",
    "garden.rst": "Community garden\n================\n\nPlots in the Fenwick community garden cost 30 euros per season.",
    "ferry.md": "The night ferry between Skarholm and Brisk takes nine hours and has sleeping cabins.",
}

QUESTIONS = {
    "Which big cats live at the zoo?": "zoo.md",
    "What time does the bakery open its doors?": "bakery.txt",
    "How high did the launch vehicle go on its first trip?": "rocket.md",
    "Can I borrow a stargazing instrument somewhere?": "library.html",
    "How much does it cost to rent a vegetable plot?": "garden.rst",
    "Is there somewhere to sleep on the overnight boat?": "ferry.md",
}


def test_real_default_embedder_ranks_right_document_first(tmp_path: Path, write_docs) -> None:
    """The real all-MiniLM-L6-v2 (offline wheel) end to end: paraphrased questions, made-up facts."""
    embedder = SentenceTransformerEmbedder()
    assert (embedder.name, embedder.dim, embedder.max_tokens) == (DEFAULT_MODEL_NAME, 384, 254)
    vecs = embedder.encode(["one sentence", "another one"])
    assert vecs.shape == (2, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    text = "Tokenisation: naïve café!"
    assert "".join(text[s:e] for s, e in embedder.tokenize_offsets(text)) == "Tokenisation:naïvecafé!"

    root = write_docs(tmp_path / "docs", FACTS)
    ingest(root, tmp_path / "index", embedder, progress=False)
    retriever = Retriever(HybridIndex.open(tmp_path / "index", embedder), embedder)
    for question, source in QUESTIONS.items():
        passages = retriever.search(question, k=3)
        assert passages[0].source == source, (question, [p.source for p in passages])
