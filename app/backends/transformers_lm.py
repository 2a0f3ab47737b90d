"""The reference backend: transformers `generate` on the version's safetensors (training and tests use it too)."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from app.backends.base import (
    Decoding,
    Generated,
    GenerationError,
    GenerationStats,
    PromptCodec,
    Sampled,
    Sampling,
    ServedModel,
)

# Decode paths of `TransformersModel.stream`: "generate" = transformers' generate with a TextIteratorStreamer.
# Only one. Measured 2026-11 on the 2-core AMD EPYC (Zen 4, avx512_bf16, no AMX) box, SmolLM2-135M,
# 1 torch thread, process CPU time per token (the box was shared, load 4-6): a hand-written greedy loop over a
# preallocated StaticCache (1024) gave 14-16 tok/s eager and 13-15 compiled (torch.compile default mode, one graph,
# no recompiles, 60-140 s to compile) in fp32, vs 16-17 with the dynamic cache; bf16 15-17 eager and 12-13 compiled.
# fp32 decode is memory-bound here (538 MB read per token), bf16 gemv is compute-bound, so neither a static cache
# nor compiling removes the bottleneck. The fast CPU path is the llamacpp backend (app/backends/llamacpp_lm.py).
DECODE_PATHS = ("generate",)


def check_decode(decode: str) -> None:
    if decode not in DECODE_PATHS:
        raise GenerationError(f"unknown decode path {decode!r}: use one of {', '.join(DECODE_PATHS)}")


class TransformersModel(ServedModel):
    """One published version in memory as a transformers model."""

    backend = "transformers"

    def __init__(self, version: Any, model: Any, tokenizer: Any, *, decode: str = "generate") -> None:
        check_decode(decode)
        window = getattr(model.config, "max_position_embeddings", None) or 2048
        super().__init__(version, PromptCodec(tokenizer), window)
        self.decode = decode  # the decode path `stream` uses when not told otherwise
        self.model = model

    @classmethod
    def load(cls, version: Any, *, dtype: str = "auto", load_in_4bit: bool = False) -> TransformersModel:
        from model_store.loading import ModelLoadError, load_causal_lm, load_tokenizer, pick_dtype

        try:
            tokenizer = load_tokenizer(version.path)
            model = load_causal_lm(version.path, dtype=pick_dtype(dtype), load_in_4bit=load_in_4bit)
        except ModelLoadError as e:
            raise GenerationError(
                f"model version {version.name} cannot be loaded ({e}); switch to a working one with "
                "`ragqa models rollback VERSION`"
            ) from e
        model.eval()
        return cls(version, model, tokenizer)

    @property
    def on_cpu(self) -> bool:  # type: ignore[override]
        return self.model.device.type == "cpu"

    def describe(self) -> str:
        return f"{self.version} (transformers, {str(self.model.dtype).removeprefix('torch.')})"

    # ---- prompts -----------------------------------------------------------------------------------
    def encode(self, messages: list[dict[str, str]]) -> Any:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.model.device)

    def _generate_kwargs(self, decoding: Decoding, prompt_len: int) -> dict[str, Any]:
        from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

        repetition_penalty = decoding.repetition_penalty
        kwargs: dict[str, Any] = {
            "max_new_tokens": decoding.max_new_tokens,
            "max_time": decoding.timeout_s,  # transformers stops generation after this many seconds
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if repetition_penalty != 1.0:
            # Penalise repeats of the ANSWER's own tokens only. generate's `repetition_penalty` also penalises
            # every prompt token, i.e. the passages: the facts a RAG answer should copy ("1874") became less
            # likely than made-up ones. Measured on 12 made-up fact documents with the default model: the
            # answer stated the fact 6/12 times with the prompt penalised, 8/12 with it ignored.
            # The llamacpp backend applies the same rule (app/backends/llamacpp_lm.py, AnswerRepetitionPenalty).
            kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=prompt_len)]
            )
        return kwargs

    # ---- generation --------------------------------------------------------------------------------
    def _stream(
        self, messages: list[dict[str, str]], decoding: Decoding, stats: GenerationStats
    ) -> Iterator[str]:
        """Greedy, on the decode path `self.decode` (DECODE_PATHS)."""
        import torch

        check_decode(self.decode)
        inputs = self.encode(messages)
        prompt_len = inputs["input_ids"].shape[1]
        stats.prompt_tokens = prompt_len
        streamer = _counting_streamer(self.tokenizer, stats, timeout=decoding.timeout_s + 30)
        errors: list[BaseException] = []
        # Set when the reader stops early (the user pressed Stop: the app closes this generator); without it
        # the thread would keep the CPU busy until max_new_tokens for an answer nobody reads.
        abandoned = threading.Event()

        def run() -> None:
            from transformers import StoppingCriteriaList

            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        do_sample=False,
                        stopping_criteria=StoppingCriteriaList([lambda *_a, **_k: abandoned.is_set()]),
                        **self._generate_kwargs(decoding, prompt_len),
                    )
            except BaseException as e:  # surfaced to the caller below, never lost in the thread
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        try:
            yield from (piece for piece in streamer if piece)
        finally:
            abandoned.set()  # a no-op after a normal end; stops generate at its next token after a close
        thread.join()
        if errors:
            raise GenerationError(f"generation failed: {errors[0]}") from errors[0]
        stats.end(
            "stop"
            if stats.eos
            else "length"
            if stats.completion_tokens >= decoding.max_new_tokens
            else "time"
        )

    def _generate_batch(
        self, conversations: list[list[dict[str, str]]], decoding: Decoding
    ) -> list[Generated]:
        """One greedy `generate` over all prompts, left-padded.

        Left padding keeps every prompt's last token at the end of the row, where generation continues; the
        attention mask hides the pads and generate derives the position ids from it (cumsum of the mask), so
        each row sees the positions it would see alone. The repetition penalty ignores the padded prompt width,
        i.e. every row's prompt and pads, as in `_stream`. The time limit is per answer, so the batch gets
        `timeout_s` times its size.
        """
        import dataclasses

        import torch

        prompts = [self.codec.prompt_ids(m) for m in conversations]
        input_ids, attention_mask = self._left_padded(prompts)
        width = input_ids.shape[1]
        limits = dataclasses.replace(decoding, timeout_s=decoding.timeout_s * len(prompts))
        outputs: list[Any] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    outputs.append(
                        self.model.generate(
                            input_ids=input_ids,
                            attention_mask=attention_mask,
                            do_sample=False,
                            **self._generate_kwargs(limits, width),
                        )
                    )
            except BaseException as e:  # surfaced to the caller below, never lost in the thread
                errors.append(e)

        # In a thread of its own, as `_stream` generates. Measured 2026-11 on the loaded 2-core box (load ~9),
        # fp32, 6 RAG prompts of 590-850 tokens, 48 new tokens: the same generate called from a `ragqa eval`
        # process's main thread took 200 CPU-s, from a worker thread 29 CPU-s (6 streamed answers: 28 CPU-s).
        thread = threading.Thread(target=run, name="generate-batch", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise GenerationError(f"generation failed: {errors[0]}") from errors[0]
        out = outputs[0]
        eos = self.tokenizer.eos_token_id
        results = []
        for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
            stopped = eos in row
            ids = row[: row.index(eos)] if stopped else row
            reason = "stop" if stopped else "length" if len(ids) >= decoding.max_new_tokens else "time"
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            results.append(Generated(text, len(prompt), len(ids), reason))
        return results

    def _sample(self, messages: list[dict[str, str]], request: Sampling) -> list[Sampled]:
        """All `n` in one batched generate call (much faster than n calls); one seed, told apart by position."""
        import torch

        inputs = self.encode(messages)
        prompt_len = inputs["input_ids"].shape[1]
        torch.manual_seed(request.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                num_return_sequences=request.n,
                **self._generate_kwargs(request, prompt_len),
            )
        latency = (time.perf_counter() - start) * 1000
        return [
            Sampled(text, finished, count, latency, request.record(i))
            for i, (text, finished, count) in enumerate(self._answers(out[:, prompt_len:]))
        ]

    def _sample_batch(
        self, conversations: list[list[dict[str, str]]], request: Sampling, seeds: list[int]
    ) -> list[list[Sampled]]:
        """Every prompt's `n` candidates in ONE sampled generate, seeded with the first prompt's seed.

        The prompts are left-padded into one batch and each is prefilled ONCE, its KV cache then repeated `n`
        times: generate's num_return_sequences would prefill every prompt n times, and for a RAG prompt of a
        few hundred tokens with a short answer the prefill is most of the compute. A row's sample depends on
        the batch it was drawn in, so its record names the batch (`batch_prompts`, `batch_index`) besides the
        batch's seed; `latency_ms` is one prompt's share of the batch's wall time, and the time limit is the
        per-prompt limit times the number of prompts.
        """
        import torch

        ids, mask = self._left_padded([self.codec.prompt_ids(m) for m in conversations])
        width = ids.shape[1]
        torch.manual_seed(request.seed)
        start = time.perf_counter()

        def prefill_and_sample() -> Any:
            with torch.inference_mode(), warnings.catch_warnings():
                # transformers 5.24 renamed generate's `past_key_values` to `cache` with a FutureWarning; the
                # old name works in every version of the pinned range (<6), the new one is not known to all.
                warnings.filterwarnings("ignore", "`past_key_values` is deprecated", FutureWarning)
                cache = self._prefill(ids, mask)
                cache.batch_repeat_interleave(request.n)
                limits = replace(request, timeout_s=request.timeout_s * len(seeds))
                return self.model.generate(
                    input_ids=ids.repeat_interleave(request.n, 0),
                    attention_mask=mask.repeat_interleave(request.n, 0),
                    past_key_values=cache,
                    do_sample=True,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    top_k=request.top_k,
                    **self._generate_kwargs(limits, width),
                )

        out = _in_worker_thread(prefill_and_sample)
        latency = (time.perf_counter() - start) * 1000 / len(conversations)
        answers = self._answers(out[:, width:])
        batch = {"batch_prompts": len(conversations)}
        return [
            [
                Sampled(text, finished, count, latency, request.record(i, batch_index=j, **batch))
                for i, (text, finished, count) in enumerate(answers[j * request.n : (j + 1) * request.n])
            ]
            for j in range(len(conversations))
        ]

    def _left_padded(self, prompts: list[list[int]]) -> tuple[Any, Any]:
        """(input_ids, attention_mask) of the prompts padded on the left, so every answer starts at one column."""
        import torch

        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
        )
        return ids, mask

    def _prefill(self, ids: Any, mask: Any) -> Any:
        """The KV cache of every prompt but its last token (generate starts from that token and samples)."""
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # positions as generate computes them for left padding
        out = self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,  # the prompt's logits are not needed: 8 x 335 x 49k floats would be ~0.5 GB
        )
        cache = getattr(out, "cache", None)  # transformers 5.24 names it `cache` (`past_key_values` before)
        return cache if cache is not None else out.past_key_values

    def _answers(self, rows: Any) -> list[tuple[str, bool, int]]:
        """(text, ended with EOS, answer tokens) of each generated row, cut at its first EOS."""
        eos = self.tokenizer.eos_token_id
        answers = []
        for row in rows:
            ids = row.tolist()
            finished = eos in ids
            if finished:
                ids = ids[: ids.index(eos)]
            answers.append((self.tokenizer.decode(ids, skip_special_tokens=True).strip(), finished, len(ids)))
        return answers


def _in_worker_thread(fn: Any) -> Any:
    """fn() run in a thread of its own, as `_stream` and `_generate_batch` generate (the eval measured the same
    batched generate at 200 CPU-s from a process's main thread vs 29 from a worker thread on the loaded box)."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # re-raised in the caller, never lost in the thread
            errors.append(e)

    thread = threading.Thread(target=run, name="sample-batch", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def _counting_streamer(tokenizer: Any, stats: GenerationStats, timeout: float) -> Any:
    """A TextIteratorStreamer that also counts answer tokens (EOS noted apart, as llamacpp does) into `stats`."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                ids = value.reshape(-1).tolist()
                answer = [i for i in ids if i != tokenizer.eos_token_id]
                if answer:
                    stats.mark_token(len(answer))
                if len(answer) < len(ids):
                    stats.mark_eos()
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
