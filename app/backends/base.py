"""The generator interface every backend implements: stream tokens, sample k candidates, report timings.

A backend wraps ONE published model version. `app.generator.Generator` picks the backend named in the config
(`backend: transformers | llamacpp | openai`) and swaps the loaded version when the registry's `current` moves.
The prompt is always rendered with the version's own Hugging Face chat template (`PromptCodec`), so every backend
sees the same tokens for the same conversation: that is what makes greedy answers comparable across backends.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app.errors import AppError

# Answers longer than this many tokens of context are never needed for a RAG prompt, and a smaller window keeps
# the KV cache small on CPU.
MAX_CONTEXT_TOKENS = 8192
BACKENDS = ("auto", "transformers", "llamacpp", "openai")


class GenerationError(AppError, RuntimeError):
    """No answer could be generated; the message says what to do."""


@dataclass
class Sampled:
    text: str
    finished: bool  # ended with EOS (False: cut at max_new_tokens or the time limit)
    num_tokens: int
    latency_ms: float
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generated:
    """One greedy answer of `ServedModel.generate_batch`."""

    text: str
    prompt_tokens: int
    completion_tokens: int  # answer tokens; the EOS step is not one of them
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens), "time" (time limit)


@dataclass
class GenerationStats:
    """What one `stream` call measured. Filled in by the backend as it goes; read after the stream ends."""

    backend: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0  # answer tokens; the EOS step is not one of them
    eos: bool = False  # the model ended with EOS: one more decode step was spent than completion_tokens
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None  # perf_counter of the first generated piece
    ended: float | None = None
    finish_reason: str = ""  # "stop" (EOS), "length" (max_new_tokens), "time" (time limit)

    def mark_token(self, n: int = 1) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        self.completion_tokens += n

    def mark_eos(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()
        self.eos = True

    def end(self, reason: str) -> None:
        self.ended = time.perf_counter()
        self.finish_reason = reason

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Decode steps after the first / time from the first to the end (prefill excluded).

        The EOS step counts as a step (it took the same time) but not as an answer token, the same in every backend.
        """
        steps = self.completion_tokens + int(self.eos)
        if self.first_token is None or self.ended is None or steps < 2:
            return None
        span = self.ended - self.first_token
        return (steps - 1) / span if span > 0 else None

    def to_json(self) -> dict[str, Any]:
        first = None if self.first_token is None else (self.first_token - self.started) * 1000
        span = None if self.first_token is None or self.ended is None else self.ended - self.first_token
        rate = self.decode_tokens_per_s
        return {
            "backend": self.backend,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "first_token_ms": None if first is None else round(first, 1),
            "decode_tokens_per_s": None if rate is None else round(rate, 2),
            "decode_s": None if span is None else round(span, 4),  # first token -> end
            "eos": self.eos,
            "finish_reason": self.finish_reason,
        }


@dataclass(frozen=True)
class Decoding:
    """Limits of one generation (every backend)."""

    max_new_tokens: int = 256
    timeout_s: float = 120.0
    repetition_penalty: float = 1.1


@dataclass(frozen=True)
class Sampling(Decoding):
    """One request for `n` sampled candidates."""

    n: int = 2
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    # Only the k most likely tokens are sampled from (0 = all). Explicit in every backend: transformers applies
    # top_k=50 when it is not set, llama.cpp none, so leaving it out made the two backends sample differently.
    top_k: int = 50

    def record(self, index: int, *, seed: int | None = None, **extra: Any) -> dict[str, Any]:
        """The settings stored with candidate `index` so it can be reproduced (same keys for every backend)."""
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed if seed is None else seed,
            "sequence_index": index,
            "num_return_sequences": self.n,
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            **extra,
        }


class PromptCodec:
    """Chat template and token counting from the version's Hugging Face tokenizer (tokenizers, no torch)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_folder(cls, path: Any) -> PromptCodec:
        from model_store.loading import load_tokenizer

        return cls(load_tokenizer(path))

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        )

    def count_text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


class ServedModel(ABC):
    """One published version, ready to answer. Thread-safe for concurrent requests unless a backend says not."""

    backend: str = ""
    # Whether this process's CPU computes the answers (prefill is slow there: app/prompt_limit.py).
    on_cpu: bool = True

    def __init__(self, version: Any, codec: PromptCodec | None, context_window: int) -> None:
        self.version: str = version.name
        self.manifest: dict[str, Any] = version.manifest
        self.codec = codec
        self.context_window = min(int(context_window), MAX_CONTEXT_TOKENS)

    @property
    def tokenizer(self) -> Any:
        return None if self.codec is None else self.codec.tokenizer

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of a conversation, as the model will see it (fits passages into the window)."""
        assert self.codec is not None
        return len(self.codec.prompt_ids(messages))

    def count_text_tokens(self, text: str) -> int:
        assert self.codec is not None
        return self.codec.count_text(text)

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
        stats: GenerationStats | None = None,
    ) -> Iterator[str]:
        """Greedy answer, yielded as text pieces as soon as they are decoded; `stats` is filled in."""
        stats = stats if stats is not None else GenerationStats()
        stats.backend = self.backend
        return self._stream(messages, Decoding(max_new_tokens, timeout_s, repetition_penalty), stats)

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        *,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 50,
        seed: int = 0,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
    ) -> list[Sampled]:
        """`n` sampled answers to the same prompt, each with the settings that reproduce it."""
        request = Sampling(max_new_tokens, timeout_s, repetition_penalty, n, temperature, top_p, seed, top_k)
        return self._sample(messages, request)

    def generate_batch(
        self,
        conversations: list[list[dict[str, str]]],
        *,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
    ) -> list[Generated]:
        """Greedy answers to several prompts, in order: the same text `stream` gives for each one.

        `timeout_s` is per answer. Backends that cannot batch answer one prompt after the other.
        """
        if not conversations:
            return []
        return self._generate_batch(conversations, Decoding(max_new_tokens, timeout_s, repetition_penalty))

    def _generate_batch(
        self, conversations: list[list[dict[str, str]]], decoding: Decoding
    ) -> list[Generated]:
        out = []
        for messages in conversations:
            stats = GenerationStats(backend=self.backend)
            text = "".join(self._stream(messages, decoding, stats)).strip()
            out.append(Generated(text, stats.prompt_tokens, stats.completion_tokens, stats.finish_reason))
        return out

    @abstractmethod
    def _stream(
        self, messages: list[dict[str, str]], decoding: Decoding, stats: GenerationStats
    ) -> Iterator[str]: ...

    @abstractmethod
    def _sample(self, messages: list[dict[str, str]], request: Sampling) -> list[Sampled]: ...

    def sample_batch(
        self,
        conversations: list[list[dict[str, str]]],
        n: int,
        *,
        seeds: Sequence[int],
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 50,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
    ) -> list[list[Sampled]]:
        """`n` sampled answers to EACH of several prompts (one list per prompt, in order); one seed per prompt.

        `timeout_s` is per prompt (a batch of B prompts may take B times it). A backend that cannot batch prompts
        answers them one `sample` call after another, each with its own seed: exactly what `sample` would do.
        The transformers backend decodes them all in one generate seeded with the first seed.
        """
        if len(seeds) != len(conversations):
            raise ValueError("one seed per prompt is needed")
        if not conversations:
            return []
        request = Sampling(
            max_new_tokens, timeout_s, repetition_penalty, n, temperature, top_p, seeds[0], top_k
        )
        return self._sample_batch(conversations, request, list(seeds))

    def _sample_batch(
        self, conversations: list[list[dict[str, str]]], request: Sampling, seeds: list[int]
    ) -> list[list[Sampled]]:
        return [self._sample(m, replace(request, seed=s)) for m, s in zip(conversations, seeds, strict=True)]

    def describe(self) -> str:
        return f"{self.version} ({self.backend})"

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to free
        """Free what the backend holds (native memory, connections); the object is not used afterwards."""
