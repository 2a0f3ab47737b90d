"""Serve the registry's current model: load, stream tokens, sample candidates, hot-swap on publish.

The app resolves `current` (one readlink) at the start of every request. When it changed, the new version is
loaded once under a lock and replaces the old one for later requests; a request in flight holds its own reference
to the model it started with and finishes on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from training.registry import ModelRegistry, ModelVersion, RegistryError

# Answers longer than this many tokens of context are never needed for a RAG prompt, and a smaller window keeps
# the KV cache small on CPU.
MAX_CONTEXT_TOKENS = 8192

# Decode paths of `LoadedModel.stream`: "generate" = transformers' generate with a TextIteratorStreamer.
# Only one so far. Measured 2026-11 on the 2-core AMD EPYC (Zen 4, avx512_bf16, no AMX) box, SmolLM2-135M,
# 1 torch thread, process CPU time per token (the box was shared, load 4-6): a hand-written greedy loop over a
# preallocated StaticCache (1024) gave 14-16 tok/s eager and 13-15 compiled (torch.compile default mode, one graph,
# no recompiles, 60-140 s to compile) in fp32, vs 16-17 with the dynamic cache; bf16 15-17 eager and 12-13 compiled.
# fp32 decode is memory-bound here (538 MB read per token), bf16 gemv is compute-bound, so neither a static cache
# nor compiling removes the bottleneck; benchmarks/ask_latency.py compares every path listed here.
DECODE_PATHS = ("generate",)


class GenerationError(RuntimeError):
    """No answer could be generated; the message says what to do."""


@dataclass
class Sampled:
    text: str
    finished: bool  # ended with EOS (False: cut at max_new_tokens or the time limit)
    num_tokens: int
    latency_ms: float
    sampling: dict[str, Any] = field(default_factory=dict)


def pick_dtype(requested: str) -> Any:
    """bf16 on CPUs with native bf16 (AMX or avx512-bf16), else fp32.

    Measured with SmolLM2-135M on this project's 2-core machines (all under load from parallel jobs, so noisy):
    - AMD EPYC Zen 4 (avx512_bf16, no AMX): a 900-token prefill took 1.04 s in bf16 vs 1.85 s in fp32; time to
      first token in the app (4 passages, ~780 prompt tokens) p50 3.5 s bf16 vs 4.7 s fp32. Decode per CPU-second
      at one thread was a tie (15.8 vs 16.5 tok/s); wall-clock decode under load went both ways in two runs.
    - Sapphire Rapids (AMX), STACK-NOTES §1: batched forwards 3.6x faster in bf16, single-stream decode 25 vs 27 tok/s.
    Prefill dominates a RAG answer's wait (long prompt, short answer), so bf16 wins where the CPU has native bf16;
    without it bf16 is emulated and much slower. `dtype: float32` in config.yaml overrides.
    """
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def check_decode(decode: str) -> None:
    if decode not in DECODE_PATHS:
        raise GenerationError(f"unknown decode path {decode!r}: use one of {', '.join(DECODE_PATHS)}")


class LoadedModel:
    """One published version in memory."""

    def __init__(
        self, version: ModelVersion, model: Any, tokenizer: Any, *, decode: str = "generate"
    ) -> None:
        check_decode(decode)
        self.version = version.name
        self.decode = decode  # the decode path `stream` uses when not told otherwise
        self.manifest = version.manifest
        self.model = model
        self.tokenizer = tokenizer
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        self.context_window = min(int(window), MAX_CONTEXT_TOKENS)

    @classmethod
    def load(cls, version: ModelVersion, *, dtype: str = "auto", load_in_4bit: bool = False) -> LoadedModel:
        from training.modeling import ModelLoadError, load_causal_lm, load_tokenizer

        try:
            tokenizer = load_tokenizer(version.path)
            model = load_causal_lm(version.path, dtype=pick_dtype(dtype), load_in_4bit=load_in_4bit)
        except ModelLoadError as e:
            raise GenerationError(
                f"model version {version.name} cannot be loaded ({e}); switch to a working one with "
                "`ragqa models rollback VERSION`"
            ) from e
        model.eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(version, model, tokenizer)

    # ---- prompts -----------------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        return len(ids)

    def _generate_kwargs(
        self, max_new_tokens: int, timeout_s: float, repetition_penalty: float, prompt_len: int
    ) -> dict[str, Any]:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "max_time": timeout_s,  # transformers stops generation after this many seconds
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if repetition_penalty != 1.0:
            # Penalise repeats of the ANSWER's own tokens only. generate's `repetition_penalty` also penalises
            # every prompt token, i.e. the passages: the facts a RAG answer should copy ("1874") became less
            # likely than made-up ones. Measured on 12 made-up fact documents with the default model: the
            # answer stated the fact 6/12 times with the prompt penalised, 8/12 with it ignored.
            kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=prompt_len)]
            )
        return kwargs

    # ---- generation --------------------------------------------------------------------------------
    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
        decode: str | None = None,
    ) -> Iterator[str]:
        """Greedy answer, yielded as text pieces as soon as they are decoded.

        `decode` picks the decode path (DECODE_PATHS); None uses this model's default (`self.decode`).
        """
        decode = decode or self.decode
        check_decode(decode)
        yield from self._stream_generate(messages, max_new_tokens, timeout_s, repetition_penalty)

    def _stream_generate(
        self, messages: list[dict[str, str]], max_new_tokens: int, timeout_s: float, repetition_penalty: float
    ) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        inputs = self.encode(messages)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s + 30
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        do_sample=False,
                        **self._generate_kwargs(
                            max_new_tokens, timeout_s, repetition_penalty, inputs["input_ids"].shape[1]
                        ),
                    )
            except BaseException as e:  # surfaced to the caller below, never lost in the thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        yield from (piece for piece in streamer if piece)
        thread.join()
        if errors:
            raise GenerationError(f"generation failed: {errors[0]}") from errors[0]

    def sample(
        self,
        messages: list[dict[str, str]],
        n: int,
        *,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
        max_new_tokens: int = 256,
        timeout_s: float = 120.0,
        repetition_penalty: float = 1.1,
    ) -> list[Sampled]:
        """`n` sampled answers to the same prompt in one batched generate call (much faster than n calls).

        The settings needed to reproduce them (seed, temperature, top_p, batch position) are returned with each.
        """
        import torch

        inputs = self.encode(messages)
        prompt_len = inputs["input_ids"].shape[1]
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                num_return_sequences=n,
                **self._generate_kwargs(max_new_tokens, timeout_s, repetition_penalty, prompt_len),
            )
        latency = (time.perf_counter() - start) * 1000
        results = []
        for i, row in enumerate(out[:, prompt_len:]):
            ids = row.tolist()
            eos = self.tokenizer.eos_token_id
            finished = eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            settings = {
                "do_sample": True,
                "temperature": temperature,
                "top_p": top_p,
                "seed": seed,
                "sequence_index": i,
                "num_return_sequences": n,
                "max_new_tokens": max_new_tokens,
                "repetition_penalty": repetition_penalty,
            }
            results.append(Sampled(text, finished, len(ids), latency, settings))
        return results


class Generator:
    """Holds the loaded current version and swaps it when the registry's `current` moves."""

    def __init__(self, registry: ModelRegistry, *, dtype: str = "auto", load_in_4bit: bool = False) -> None:
        self.registry = registry
        self.dtype = dtype
        self.load_in_4bit = load_in_4bit
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def current(self) -> LoadedModel:
        """The model for one request: resolve `current`, load it if it is new, return it."""
        name = self.registry.current_name()
        if name is None:
            raise GenerationError("no model is published yet: run `ragqa setup` to import the default model")
        loaded = self._loaded
        if loaded is not None and loaded.version == name:
            return loaded
        with self._lock:
            if self._loaded is None or self._loaded.version != name:
                try:
                    version = self.registry.get(name)
                except RegistryError as e:
                    raise GenerationError(f"{e}; switch with `ragqa models rollback VERSION`") from e
                self._loaded = LoadedModel.load(version, dtype=self.dtype, load_in_4bit=self.load_in_4bit)
            return self._loaded
