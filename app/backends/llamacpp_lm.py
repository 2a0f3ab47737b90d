"""The fast CPU backend: llama.cpp (llama-cpp-python) on the GGUF file published with each version.

The prompt is rendered and tokenised with the version's Hugging Face chat template (as in every backend), then
fed to llama.cpp as token ids, so llama.cpp sees exactly the tokens transformers sees. Greedy decoding uses
llama.cpp's own greedy sampler. The repetition penalty follows the app's rule (answer tokens only, never the
passages): llama-cpp-python feeds only SAMPLED tokens to llama.cpp's penalty sampler, so with its window as long
as the context (`last_n_tokens_size`) the native penalty is exactly transformers' RepetitionPenaltyLogitsProcessor
with `prompt_ignore_length`. tests/app/test_llamacpp_backend.py checks that against `AnswerRepetitionPenalty`
(the rule in numpy) token for token, so an upgrade that changes it is caught. Native: ~2% faster decode than the
numpy processor. Greedy answers decode with prompt-lookup drafts (`LookupGreedy`, app.backends.prompt_lookup):
the tokens that followed the latest earlier occurrence of the answer's last tokens are decoded with the current
token in one batch and kept where greedy sampling confirms them, the same answer in fewer decode steps
(`prompt_lookup: false` in config.yaml turns it off).

One llama.cpp context serves one request at a time (a context is not thread-safe); requests queue on a lock.
On a 2-core machine a second concurrent decode would only halve the speed of both.

Sampled candidates (`sample`, the k alternatives for ranking) are decoded TOGETHER as parallel sequences over the
shared prompt: the prompt is prefilled once into sequence 0 (reusing whatever prefix the context already holds),
its KV cells are shared with sequences 1..k-1 (`llama_memory_seq_cp` on a unified KV cache: no copy), and every
step decodes the next token of each unfinished candidate in one batch, each with its own sampler chain seeded
seed+i. Candidates whose answers are so far the same tokens share one row (`shared_histories`): one KV cell for
all of them, one set of logits each draws from. A seed reproduces its candidate from the same cache state and with
the same number of candidates (the others' draws decide which rows are shared): llama.cpp's logits move slightly
(up to ~0.1 here) with how many rows a decode holds, so a prompt prefilled in one batch, or a different split of
rows, may change a draw near a tie. On the 2-core Zen 4 (avx512_bf16, bf16 GGUF) a decode step of 4 rows costs
~1.7x a step of one (the engine's batched matmuls are compute-bound there): 4 alternatives of the shipped starter,
whose sampled answers often begin alike, cost ~1.2x one answer per token; 4 of the raw model, which part after a
token or two, ~1.5-1.7x.

Threads: all usable cores (affinity and cgroup quota); while `ragqa retrain`/`ragqa eval` runs on the same home
the model generates on the cores the CPU-share policy keeps for the server (model_store.cpu_share).
"""

from __future__ import annotations

import codecs
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
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
    "install it with `make install` (it builds llama.cpp for this CPU's instruction sets, ~5 min on 2 cores), or "
    "by hand: CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON\" pip install -e '.[llamacpp]' (see the README)"
)


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# Candidates sampled together at most (the app offers 2..4 alternatives); more are sampled in rounds of this many.
PARALLEL_SEQUENCES = 4


def default_threads() -> int:
    """The cores this process can really get (affinity, cgroup quota; OMP_NUM_THREADS caps it)."""
    from model_store.hardware import compute_threads

    return compute_threads()


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

    def __init__(
        self,
        version: Any,
        llama: Any,
        codec: PromptCodec,
        gguf_path: Path,
        threads: int,
        *,
        threads_now: Callable[[], int] | None = None,
        prompt_lookup: bool = True,
    ) -> None:
        super().__init__(version, codec, llama.n_ctx())
        self.llama = llama
        self.gguf_path = gguf_path
        self.threads = threads
        # Called before each generation: the threads to use now (fewer while a retrain runs); None = fixed.
        self.threads_now = threads_now
        self._threads_set = threads
        # Greedy answers decode with prompt-lookup drafts (LookupGreedy): the same tokens, fewer decode steps.
        self.prompt_lookup = prompt_lookup
        self._lock = threading.Lock()
        self._eos = {llama.token_eos()} | ({codec.tokenizer.eos_token_id} - {None})

    @classmethod
    def load(
        cls,
        version: Any,
        gguf_path: Path,
        *,
        threads: int | None = None,
        n_ctx: int | None = None,
        threads_now: Callable[[], int] | None = None,
        prompt_lookup: bool = True,
    ) -> Any:
        from llama_cpp import Llama

        threads = threads or default_threads()
        codec = PromptCodec.from_folder(version.path)
        try:
            # n_ctx=0 would take the model's trained window; the app never needs more than MAX_CONTEXT_TOKENS.
            window = n_ctx or min(_trained_context(gguf_path), MAX_CONTEXT_TOKENS)
            llama = Llama(model_path=str(gguf_path), **llama_options(threads, window))
            _allow_parallel_sequences(llama, PARALLEL_SEQUENCES)
        except (ValueError, RuntimeError, OSError) as e:
            raise GenerationError(f"llama.cpp cannot load {gguf_path}: {e}") from e
        return cls(
            version, llama, codec, gguf_path, threads, threads_now=threads_now, prompt_lookup=prompt_lookup
        )

    def describe(self) -> str:
        return f"{self.version} (llamacpp, {self.gguf_path.name}, {self.threads} threads)"

    def _use_threads(self) -> None:
        """Follow the CPU-share policy (caller holds the lock): llama_set_n_threads is cheap, checked per request."""
        if self.threads_now is None:
            return
        wanted = max(1, min(self.threads, self.threads_now()))
        if wanted != self._threads_set:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self.llama.ctx, wanted, wanted)
            self._threads_set = wanted

    # ---- generation --------------------------------------------------------------------------------
    def _check_fits(self, prompt: list[int], max_new_tokens: int) -> None:
        if len(prompt) + max_new_tokens > self.context_window:
            raise GenerationError(
                f"the prompt ({len(prompt)} tokens) and the answer ({max_new_tokens}) do not fit the "
                f"{self.context_window}-token window"
            )

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
        self._check_fits(prompt, decoding.max_new_tokens)
        deadline = time.perf_counter() + decoding.timeout_s
        stats.prompt_tokens = len(prompt)
        if self.prompt_lookup and temperature == 0.0:
            yield from LookupGreedy(self.llama, self._eos).run(prompt, decoding, stats, deadline)
            return
        # Greedy here (the app streams greedy answers): min_p=0 / typical_p=1 switch llama.cpp's extra samplers
        # off. Sampled candidates go through ParallelSampler's chain (top-k, top-p, temperature).
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
            self._use_threads()
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
        """`n` candidates decoded together over the shared prompt (module doc); seeds seed..seed+n-1."""
        prompt = self.codec.prompt_ids(messages)
        self._check_fits(prompt, request.max_new_tokens)
        results: list[Sampled] = []
        start = time.perf_counter()
        with self._lock:
            self._use_threads()
            for first in range(0, request.n, PARALLEL_SEQUENCES):
                count = min(PARALLEL_SEQUENCES, request.n - first)
                try:
                    rows = ParallelSampler(self.llama, self._eos).run(prompt, request, first, count)
                except GenerationError:
                    raise
                except Exception as e:  # llama.cpp reports decode failures as RuntimeError/ValueError
                    raise GenerationError(f"generation failed: {e}") from e
                for i, (ids, reason) in enumerate(rows, start=first):
                    text = self.llama.detokenize(ids).decode("utf-8", errors="replace").strip()
                    settings = request.record(i, seed=request.seed + i, backend=self.backend)
                    results.append(Sampled(text, reason == "stop", len(ids), 0.0, settings))
        latency = (time.perf_counter() - start) * 1000
        for s in results:
            s.latency_ms = latency
        return results

    def close(self) -> None:
        self.llama.close()


class ParallelSampler:
    """k sampled continuations of one prompt as parallel llama.cpp sequences sharing the prompt's KV cells.

    Sequence 0 is the Llama object's own sequence: the prompt is prefilled there with llama-cpp-python's prefix
    reuse, so a prompt just answered (the UI asks for alternatives after the streamed answer) costs no prefill.
    Afterwards only the prompt is left in the cache, and the Llama's bookkeeping says so.
    """

    def __init__(self, llama: Any, eos: set[int]) -> None:
        self.llama = llama
        self.eos = eos

    def run(
        self, prompt: list[int], request: Sampling, first: int, count: int
    ) -> list[tuple[list[int], str]]:
        """(token ids, finish reason "stop" | "length" | "time") per sequence; seeds seed+first+i."""
        import llama_cpp
        from llama_cpp._internals import LlamaBatch

        llama = self.llama
        if count > llama_cpp.llama_n_seq_max(llama.ctx):
            raise GenerationError(
                f"the llama.cpp context holds {llama_cpp.llama_n_seq_max(llama.ctx)} sequences"
            )
        memory = llama_cpp.llama_get_memory(llama.ctx)
        deadline = time.perf_counter() + request.timeout_s
        samplers = [self._sampler(request, request.seed + first + i) for i in range(count)]
        batch = LlamaBatch(n_tokens=count, embd=0, n_seq_max=count, verbose=False)
        try:
            llama_cpp.llama_memory_seq_keep(memory, 0)  # drop sequences an interrupted call may have left
            prefill(llama, prompt)
            for seq in range(1, count):
                llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
            out: list[list[int]] = [[] for _ in range(count)]
            reason = ["length"] * count
            # The prompt's last logits are in the context: every sequence draws its first token from them.
            pending = {seq: samplers[seq].sample(llama._ctx, -1) for seq in range(count)}
            groups = [list(range(count))]  # sequences whose answers so far are the same tokens
            for step in range(request.max_new_tokens):
                for seq, token in list(pending.items()):
                    if token in self.eos:
                        reason[seq] = "stop"
                        del pending[seq]
                    else:
                        out[seq].append(token)
                if step == request.max_new_tokens - 1 or not pending:
                    break
                if time.perf_counter() > deadline:
                    for seq in pending:
                        reason[seq] = "time"
                    break
                groups = shared_histories(groups, pending)
                rows = [(members, pending[members[0]], len(prompt) + step) for members in groups]
                decode_rows(llama, batch, rows)
                pending = {
                    seq: samplers[seq].sample(llama._ctx, j)
                    for j, members in enumerate(groups)
                    for seq in members
                }
            return list(zip(out, reason, strict=True))
        finally:
            batch.close()
            for sampler in samplers:
                sampler.close()
            self._keep_prompt_only(memory, len(prompt))

    def _sampler(self, request: Sampling, seed: int) -> Any:
        """The chain `Llama.generate` builds (penalty on answer tokens only), with the request's top-k: as in
        transformers, and it makes a draw ~15x cheaper (0.25 vs 4 ms on the 2-core Zen 4 box, bf16 SmolLM2):
        top-p alone sorts the whole 49k-token vocabulary for every token of every candidate."""
        self.llama.set_seed(seed)
        return self.llama._init_sampler(
            top_k=request.top_k,
            top_p=request.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=request.temperature,
            repeat_penalty=request.repetition_penalty,
        )

    def _keep_prompt_only(self, memory: Any, prompt_len: int) -> None:
        """Leave the cache as a plain prompt in sequence 0, so the next call reuses it and the Llama's own
        generate sees consistent state (its logits must be recomputed: _requires_eval)."""
        import llama_cpp

        with contextlib.suppress(Exception):
            llama_cpp.llama_memory_seq_keep(memory, 0)
            llama_cpp.llama_memory_seq_rm(memory, 0, prompt_len, -1)
        llama = self.llama
        llama.n_tokens = min(llama.n_tokens, prompt_len)
        llama._requires_eval = True


class LookupGreedy:
    """Greedy decoding with prompt-lookup drafts (app.backends.prompt_lookup): each step decodes the current
    token and the guessed next ones in one batch of sequence 0, then keeps the guesses greedy sampling confirms.

    Every token is still llama.cpp's greedy pick (with the penalty chain `Llama.generate` builds) given all the
    tokens before it, so the answer is the plain greedy one; tests/app/test_llamacpp_backend.py checks that token
    for token against `Llama.generate`. Afterwards the cache holds the prompt and the tokens decoded, and the
    Llama's bookkeeping says so: the next request reuses the prompt prefix as before.
    """

    def __init__(self, llama: Any, eos: set[int]) -> None:
        self.llama = llama
        self.eos = eos

    def run(
        self, prompt: list[int], decoding: Decoding, stats: GenerationStats, deadline: float
    ) -> Iterator[int]:
        """Token ids (EOS excluded) as `LlamaCppModel._tokens` yields them; sets the stats' end reason."""
        from llama_cpp._internals import LlamaBatch

        from app.backends.prompt_lookup import MAX_DRAFT, DraftIndex

        llama = self.llama
        budget = decoding.max_new_tokens
        # cells in the cache that hold confirmed tokens; None until the prompt is in
        n_past: int | None = None
        emitted = 0
        reason = "length"
        sampler = batch = None
        try:
            sampler = llama._init_sampler(
                top_k=0,
                top_p=1.0,
                min_p=0.0,
                typical_p=1.0,
                temp=0.0,
                repeat_penalty=decoding.repetition_penalty,
            )
            batch = LlamaBatch(n_tokens=MAX_DRAFT + 1, embd=0, n_seq_max=1, verbose=False)
            prefill(llama, prompt)
            n_past = len(prompt)
            index = DraftIndex(prompt)
            token = sampler.sample(llama._ctx, -1)
            while True:
                if token in self.eos:
                    stats.mark_eos()
                    reason = "stop"
                    break
                stats.mark_token()
                yield token
                emitted += 1
                if emitted >= budget:
                    break
                if time.perf_counter() > deadline:
                    reason = "time"
                    break
                index.append(token)
                # The step yields the confirmed guesses plus one token: never guess past the budget.
                draft = index.draft(budget - emitted - 1)
                decode_rows(llama, batch, [(0, t, n_past + j) for j, t in enumerate([token, *draft])])
                llama.input_ids[n_past] = token
                n_past += 1
                token, stop = None, False
                for j, guess in enumerate(draft):
                    picked = sampler.sample(llama._ctx, j)
                    if picked != guess or picked in self.eos:
                        token = picked
                        break
                    stats.mark_token()
                    yield picked
                    emitted += 1
                    index.append(picked)
                    llama.input_ids[n_past] = picked
                    n_past += 1
                    if time.perf_counter() > deadline:
                        reason, stop = "time", True
                        break
                if stop:
                    break
                if token is None:
                    token = sampler.sample(llama._ctx, len(draft))
                else:  # the rejected guess and those after it leave the cache
                    llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
        finally:
            # Also on a closed stream (Stop) or a failed decode: unconfirmed guesses leave the cache. A prefill
            # that failed part-way left llama's own count of the prompt cells it did decode: keep that one.
            kept = llama.n_tokens if n_past is None else n_past
            llama._ctx.kv_cache_seq_rm(-1, kept, -1)
            llama.n_tokens = kept
            llama._requires_eval = True  # the context's logits are not those of its last token
            if batch is not None:
                batch.close()
            if sampler is not None:
                sampler.close()
        stats.end(reason)


def prefill(llama: Any, prompt: list[int]) -> None:
    """Prompt into sequence 0, keeping the longest cached prefix; the last prompt token is always decoded again
    so its logits are the context's current ones."""
    cached = 0
    for a, b in zip(llama._input_ids.tolist(), prompt, strict=False):
        if a != b:
            break
        cached += 1
    cached = min(cached, len(prompt) - 1)
    llama._ctx.kv_cache_seq_rm(-1, cached, -1)
    llama.n_tokens = cached
    llama.eval(prompt[cached:])


def shared_histories(groups: list[list[int]], pending: dict[int, int]) -> list[list[int]]:
    """The sequences whose answers are still the same tokens, after each drew `pending[seq]` (finished ones gone).

    A group's members have the same prompt and answer so far, hence the same KV cells and the same next-token
    logits: one batch row decodes their next token for all of them (one cell tagged with every member's sequence
    id), and each member then draws from that row's logits with its own seeded sampler chain. Members that drew
    different tokens split into groups of their own; the cells decoded before stay shared. Sampled candidates of
    a fine-tuned reader often begin alike: on the 20 demo questions, 4 candidates of the shipped starter needed
    38% fewer rows than one row per candidate. It needs the unified KV cache `_allow_parallel_sequences` makes: a
    split cache (one stream per sequence) refuses a row that belongs to several sequences.
    """
    out: list[list[int]] = []
    for group in groups:
        by_token: dict[int, list[int]] = {}
        for seq in group:
            if seq in pending:
                by_token.setdefault(pending[seq], []).append(seq)
        out.extend(by_token.values())
    return out


def decode_rows(llama: Any, batch: Any, rows: list[tuple[int | list[int], int, int]]) -> None:
    """One llama.cpp decode of (sequence or sequences, token, position) rows, logits for every row. A row with
    several sequences puts one KV cell shared by all of them (the batch must hold that many sequence ids)."""
    raw = batch.batch
    raw.n_tokens = len(rows)
    for j, (seq, token, pos) in enumerate(rows):
        seqs = list(seq) if isinstance(seq, (list, tuple)) else [int(seq)]
        raw.token[j] = token
        raw.pos[j] = pos
        raw.n_seq_id[j] = len(seqs)
        for m, s in enumerate(seqs):
            raw.seq_id[j][m] = s
        raw.logits[j] = True
    llama._ctx.decode(batch)


def _allow_parallel_sequences(llama: Any, n_seq: int) -> None:
    """Give `llama` a context with `n_seq` sequences over ONE unified KV cache (shared prompt cells).

    llama-cpp-python's Llama takes neither n_seq_max nor kv_unified, so its context is replaced by an equal one
    with those two set (the first is freed). Unified: the k sequences share the prompt's cells and the whole
    window is available to each (a split cache would give each sequence n_ctx / n_seq).
    """
    from llama_cpp._internals import LlamaContext

    params = llama.context_params
    params.n_seq_max = n_seq
    params.kv_unified = True
    context = LlamaContext(model=llama._model, params=params, verbose=llama.verbose)
    old = llama._ctx
    llama._ctx = llama._stack.enter_context(contextlib.closing(context))
    old.close()


def _trained_context(gguf_path: Path) -> int:
    """The GGUF's `<arch>.context_length`, 2048 when absent.

    Read by llama.cpp itself with `vocab_only` (the metadata in C, no weights: ~0.2 s on the 2-core CPU). gguf's
    Python GGUFReader, used before, parsed every field including the 49k-entry vocabulary arrays: ~5 s added to
    every model load (app start, hot swap, each test that loads a model)."""
    from llama_cpp import Llama

    try:  # llama-cpp-python's own fd-level silencer: the probe's context logs a bogus "n_ctx_train (0)" warning
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:  # a later llama-cpp-python without it: the warning shows, nothing else changes
        quiet: Any = contextlib.nullcontext()
    else:
        quiet = suppress_stdout_stderr(disable=False)
    with quiet:
        probe = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        metadata = dict(probe.metadata)
    finally:
        probe.close()
    for key, value in metadata.items():
        if key.endswith(".context_length"):
            return int(value)
    return 2048
