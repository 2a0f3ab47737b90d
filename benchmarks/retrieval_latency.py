"""Retrieval latency of `Retriever.search` on synthetic clustered corpora (10k and 100k chunks).

Corpus: `n` chunks in 1,000 topics; each chunk's vector is its topic centre plus noise (384-d, unit
length: real embeddings cluster like this, iid Gaussian vectors do not and make HNSW look broken),
and its text is ~60 words: 12 from its topic's own vocabulary, the rest Zipf-distributed from a
shared 20k-word vocabulary, so BM25 has realistic posting lists. Queries: a noisy topic centre +
6 topic words + 2 common words.

Measured per query: `Retriever.search_with_vector` = dense top-N + BM25 top-N + RRF + passages, with
the query vector given, i.e. query EMBEDDING EXCLUDED. Query embedding with the real default
embedder is measured separately (`query_embedding` in the JSON; skip with --no-embedder). For each
corpus size, flat (IndexFlatIP, exact) and HNSW (M=32, efC=80, efSearch=64) are compared, with the
dense recall@20 of HNSW against flat. Prints a table, writes benchmarks/results/retrieval_latency.json.

    python benchmarks/retrieval_latency.py [--sizes 10000 100000] [--queries 300] [--no-embedder]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from retrieval.chunking import ChunkingParams
from retrieval.index import FileEntry, HybridIndex
from retrieval.retriever import Retriever
from retrieval.types import Chunk

DIM = 384
TOPICS = 1_000
VOCAB = 20_000
RESULTS = Path(__file__).parent / "results" / "retrieval_latency.json"


def make_corpus(
    n: int, rng: np.random.Generator
) -> tuple[list[Chunk], np.ndarray, np.ndarray, list[list[str]]]:
    """Chunks (n), their vectors (n, DIM) float32 unit rows, topic centres (TOPICS, DIM), topic words."""
    centres = _unit(rng.normal(size=(TOPICS, DIM)).astype(np.float32))
    topic_of = rng.integers(0, TOPICS, size=n)
    vectors = _unit(centres[topic_of] + 0.05 * rng.normal(size=(n, DIM)).astype(np.float32))
    shared = [f"w{i}" for i in range(VOCAB)]
    topic_words = [[f"t{t}x{j}" for j in range(30)] for t in range(TOPICS)]
    zipf = np.minimum(rng.zipf(1.2, size=(n, 48)), VOCAB) - 1
    own = rng.integers(0, 30, size=(n, 12))
    chunks = []
    for i in range(n):
        words = [shared[k] for k in zipf[i]] + [topic_words[topic_of[i]][k] for k in own[i]]
        text = " ".join(rng.permutation(words))
        chunks.append(Chunk(f"{i:016x}", f"doc{i // 10}.md", text, i % 10, f"h{i // 10}"))
    return chunks, vectors, centres, topic_words


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_queries(q: int, centres: np.ndarray, topic_words: list[list[str]], rng: np.random.Generator):
    topics = rng.integers(0, TOPICS, size=q)
    vecs = _unit(centres[topics] + 0.08 * rng.normal(size=(q, DIM)).astype(np.float32))
    texts = [
        " ".join([*rng.choice(topic_words[t], 6, replace=False), f"w{rng.integers(0, 50)}", "w1"])
        for t in topics
    ]
    return list(zip(texts, vecs, strict=True))


def build(chunks: list[Chunk], vectors: np.ndarray, hnsw: bool) -> tuple[HybridIndex, float]:
    files: dict[str, FileEntry] = {}
    t0 = time.perf_counter()
    index = HybridIndex.build(
        chunks,
        vectors,
        embedder_name="synthetic",
        dim=DIM,
        chunking=ChunkingParams(),
        files=files,
        hnsw_threshold=0 if hnsw else len(chunks) + 1,
    )
    return index, time.perf_counter() - t0


def measure(index: HybridIndex, queries, k: int = 4) -> dict[str, float]:
    retriever = Retriever(index, embedder=None)  # type: ignore[arg-type]  # vectors are given
    for text, vec in queries[:10]:  # warm-up
        retriever.search_with_vector(text, vec, k)
    totals, dense, bm25 = [], [], []
    for text, vec in queries:
        retriever.search_with_vector(text, vec, k)
        t = retriever.last_timings_ms
        totals.append(t["total"])
        dense.append(t["dense"])
        bm25.append(t["bm25"])
    return {
        "p50_ms": _pct(totals, 50),
        "p95_ms": _pct(totals, 95),
        "dense_p50_ms": _pct(dense, 50),
        "dense_p95_ms": _pct(dense, 95),
        "bm25_p50_ms": _pct(bm25, 50),
        "bm25_p95_ms": _pct(bm25, 95),
    }


def _pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(xs, p)), 3)


def dense_recall(flat: HybridIndex, hnsw: HybridIndex, queries, n: int = 20) -> float:
    hits = 0
    for _, vec in queries:
        exact = {r for r, _ in flat.dense_search(vec, n)}
        hits += len(exact & {r for r, _ in hnsw.dense_search(vec, n)})
    return round(hits / (n * len(queries)), 4)


def query_embedding_latency(q: int = 100) -> dict[str, float]:
    from retrieval.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    questions = [f"what does the report say about topic {i} and its {i % 7} main findings?" for i in range(q)]
    times = []
    for text in questions:
        t0 = time.perf_counter()
        embedder.encode_query(text)
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "model": embedder.name,
        "bf16": embedder.bf16,
        "p50_ms": _pct(times, 50),
        "p95_ms": _pct(times, 95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-embedder", action="store_true", help="skip the real query-embedding timing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import faiss

    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        chunks, vectors, centres, topic_words = make_corpus(n, rng)
        queries = make_queries(args.queries, centres, topic_words, rng)
        flat, flat_build = build(chunks, vectors, hnsw=False)
        hnsw, hnsw_build = build(chunks, vectors, hnsw=True)
        recall = dense_recall(flat, hnsw, queries)
        for name, index, build_s in (("flat", flat, flat_build), ("hnsw", hnsw, hnsw_build)):
            row = {"chunks": n, "faiss": index.faiss_type, "kind": name, "build_s": round(build_s, 2)}
            row.update(measure(index, queries))
            row["dense_recall@20_vs_flat"] = 1.0 if name == "flat" else recall
            rows.append(row)
            print(_format_row(row), flush=True)
    result = {
        "what": "Retriever.search_with_vector (dense + BM25 + RRF, k=4, N=20); query embedding excluded",
        "machine": {"cpu_threads_faiss": faiss.omp_get_max_threads(), "python": platform.python_version()},
        "queries": args.queries,
        "results": rows,
        "query_embedding": None if args.no_embedder else query_embedding_latency(),
    }
    if result["query_embedding"]:
        print("query embedding (real default embedder):", result["query_embedding"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


def _format_row(r: dict) -> str:
    return (
        f"{r['chunks']:>7} {r['kind']:<4} build {r['build_s']:>6.1f}s  search p50 {r['p50_ms']:>6.2f} ms  "
        f"p95 {r['p95_ms']:>6.2f} ms  (dense p95 {r['dense_p95_ms']:.2f}, bm25 p95 {r['bm25_p95_ms']:.2f})  "
        f"recall@20 {r['dense_recall@20_vs_flat']:.3f}"
    )


if __name__ == "__main__":
    main()
