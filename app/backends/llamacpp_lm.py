"""The fast CPU backend: llama.cpp (llama-cpp-python) on the GGUF file published with each version.

The prompt is rendered and tokenised with the version's Hugging Face chat template (as in every backend), then
fed to llama.cpp as token ids, so llama.cpp sees exactly the tokens transformers sees. Greedy decoding uses
llama.cpp's own greedy sampler. The repetition penalty follows the app's rule (answer tokens only, never the
passages): llama-cpp-python feeds only SAMPLED tokens to llama.cpp's penalty sampler, so with its window as long
as the context (`last_n_tokens_size`) the native penalty is exactly transformers' RepetitionPenaltyLogitsProcessor
with `prompt_ignore_length`. tests/app/test_llamacpp_backend.py checks that against `AnswerRepetitionPenalty`
(the rule in numpy) token for token, so an upgrade that changes it is caught. Native: ~2% faster decode than the
numpy processor.

One llama.cpp context serves one request at a time (a context is not thread-safe); requests queue on a lock.
On a 2-core machine a second concurrent decode would only halve the speed of both.
"""

from __future__ import annotations

import codecs
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.backends.base import (
    MAX_CONTEXT_TOKENS,
    Decoding,
    GenerationError,
    GenerationStats,
    PromptCodec,
    Sampled,
    Sampling,
    ServedModel,
)

INSTALL_HINT = (
    'install it with: CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON" '
    "pip install -e '.[llamacpp]' (a source build, ~5 min on 2 cores; see the README)"
)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def default_threads() -> int:
    """The CPUs this process may run on (cgroup/affinity aware), which is what llama.cpp should use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def llama_options(threads: int, window: int) -> dict[str, Any]:
    """The llama.cpp context settings the app uses (benchmarks/ask_latency.py's raw row uses the same).

    flash_attn: prefill of a ~880-token RAG prompt 1.45 s vs 1.75 s on the 2-core Zen 4 box, decode unchanged
    (SmolLM2-135M q8_0). n_batch 512: 1024 was slower (2.05 s).
    """
    return {
        "n_ctx": window,
        "n_batch": 512,
        "n_threads": threads,
        "n_threads_batch": threads,
        "flash_attn": True,
        "last_n_tokens_size": window,  # the penalty window: every generated token (see the module doc)
        "verbose": False,
    }


class AnswerRepetitionPenalty:
    """transformers' RepetitionPenaltyLogitsProcessor(prompt_ignore_length=...) as a llama.cpp logits processor.

    Every token already generated (not the prompt) has its logit divided by `penalty` when positive, multiplied
    when negative, once per distinct token. The reference the native penalty is tested against.
    """

    def __init__(self, penalty: float, prompt_len: int) -> None:
        self.penalty = penalty
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        answer = input_ids[self.prompt_len :]
        if len(answer) == 0:
            return scores
        ids = np.unique(answer)
        picked = scores[ids]
        scores[ids] = np.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores


class LlamaCppModel(ServedModel):
    backend = "llamacpp"

    def __init__(self, version: Any, llama: Any, codec: PromptCodec, gguf_path: Path, threads: int) -> None:
        super().__init__(version, codec, llama.n_ctx())
        self.llama = llama
        self.gguf_path = gguf_path
        self.threads = threads
        self._lock = threading.Lock()
        self._eos = {llama.token_eos()} | ({codec.tokenizer.eos_token_id} - {None})

    @classmethod
    def load(
        cls, version: Any, gguf_path: Path, *, threads: int | None = None, n_ctx: int | None = None
    ) -> Any:
        from llama_cpp import Llama

        threads = threads or default_threads()
        codec = PromptCodec.from_folder(version.path)
        try:
            # n_ctx=0 would take the model's trained window; the app never needs more than MAX_CONTEXT_TOKENS.
            window = n_ctx or min(_trained_context(gguf_path), MAX_CONTEXT_TOKENS)
            llama = Llama(model_path=str(gguf_path), **llama_options(threads, window))
        except (ValueError, RuntimeError, OSError) as e:
            raise GenerationError(f"llama.cpp cannot load {gguf_path}: {e}") from e
        return cls(version, llama, codec, gguf_path, threads)

    def describe(self) -> str:
        return f"{self.version} (llamacpp, {self.gguf_path.name}, {self.threads} threads)"

    # ---- generation --------------------------------------------------------------------------------
    def _tokens(
        self,
        prompt: list[int],
        decoding: Decoding,
        stats: GenerationStats,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> Iterator[int]:
        """Generated token ids (EOS excluded). The caller holds the lock."""
        if len(prompt) + decoding.max_new_tokens > self.context_window:
            raise GenerationError(
                f"the prompt ({len(prompt)} tokens) and the answer ({decoding.max_new_tokens}) do not fit the "
                f"{self.context_window}-token window"
            )
        deadline = time.perf_counter() + decoding.timeout_s
        stats.prompt_tokens = len(prompt)
        # top_k=0 / min_p=0 / typical_p=1 switch llama.cpp's extra samplers off: temperature + top-p only, as the
        # transformers backend samples (order differs: llama.cpp applies top-p before the temperature).
        tokens = self.llama.generate(
            prompt,
            temp=temperature,
            top_k=0,
            top_p=top_p,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=decoding.repetition_penalty,
        )
        reason = "length"
        for token in tokens:
            if token in self._eos:
                stats.mark_eos()
                reason = "stop"
                break
            stats.mark_token()
            yield token
            if stats.completion_tokens >= decoding.max_new_tokens:
                break
            if time.perf_counter() > deadline:
                reason = "time"
                break
        stats.end(reason)

    def _stream(
        self, messages: list[dict[str, str]], decoding: Decoding, stats: GenerationStats
    ) -> Iterator[str]:
        prompt = self.codec.prompt_ids(messages)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span two tokens
        with self._lock:
            try:
                for token in self._tokens(prompt, decoding, stats):
                    piece = decoder.decode(self.llama.detokenize([token]))
                    if piece:
                        yield piece
            except GenerationError:
                raise
            except Exception as e:  # llama.cpp reports decode failures as RuntimeError/ValueError
                raise GenerationError(f"generation failed: {e}") from e
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _sample(self, messages: list[dict[str, str]], request: Sampling) -> list[Sampled]:
        """One after another, seeds seed..seed+n-1; llama.cpp keeps the prompt's KV cache, so it is read once."""
        prompt = self.codec.prompt_ids(messages)
        results = []
        start = time.perf_counter()
        with self._lock:
            for i in range(request.n):
                self.llama.set_seed(request.seed + i)
                stats = GenerationStats(backend=self.backend)
                ids = list(
                    self._tokens(prompt, request, stats, temperature=request.temperature, top_p=request.top_p)
                )
                text = self.llama.detokenize(ids).decode("utf-8", errors="replace").strip()
                settings = request.record(i, seed=request.seed + i, backend=self.backend)
                results.append(Sampled(text, stats.finish_reason == "stop", len(ids), 0.0, settings))
        latency = (time.perf_counter() - start) * 1000
        for s in results:
            s.latency_ms = latency
        return results

    def close(self) -> None:
        self.llama.close()


def _trained_context(gguf_path: Path) -> int:
    """The GGUF's `<arch>.context_length` (read from the header only), 2048 when absent."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    for key, value in reader.fields.items():
        if key.endswith(".context_length"):
            return int(value.parts[value.data[0]][0])
    return 2048
