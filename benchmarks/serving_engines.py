"""Which CPU engine should serve the default model? llama.cpp against engines that install from wheels.

Every row answers the SAME prompt token ids: 4-passage RAG prompts rendered with the app's own prompt format
(`retrieval.prompt.render_prompt`, the version's chat template) over squad2-dev-half paragraphs (the question's
paragraph plus the next 3 of its article, the gold one rotating through positions 1-4), ~700-800 tokens each.

Rows (`--rows`; a row whose engine is not importable is reported as skipped with the reason, never faked):
- `transformers fp32`: the reference (a hand-written greedy loop over the KV cache: argmax = generate's greedy);
- `llama.cpp f16 | q8_0 | q4_K_M`: llama-cpp-python on GGUFs of the version (f16/q8_0 written by the project's
  converter `model_store.gguf.export_gguf`, q4_K_M quantised from the f16 with `llama_cpp.llama_model_quantize`),
  the app's context settings (`app.backends.llamacpp_lm.llama_options`); `llama.cpp f16 +prefix`: the KV state after
  the fixed prefix every prompt shares (system prompt + the start of the user turn) is saved once and restored before
  each prompt, so only the rest is prefilled;
- `ctranslate2 float32 | int8_float32 | int8`: a CTranslate2 conversion of the version's safetensors
  (`ct2-transformers-converter`, float32 storage; the compute type quantises at load); `ctranslate2 int8 AVX2`
  forces CTranslate2's AVX2 kernels (CT2_FORCE_CPU_ISA) to show the speed on a CPU without AVX-512;
  `ctranslate2 int8 +prefix`: CTranslate2's own `static_prompt` cache of the shared prefix;
- `openvino fp32 | fp16 | int8 | int4`: OpenVINO GenAI's LLMPipeline on `optimum-cli export openvino` folders (need
  optimum-intel, whose transformers pin (<5.6) conflicts with the project's: the export runs in its own venv, given
  with `--ov-dir`); inference precision pinned to f32 (OpenVINO would pick bf16 on an AVX-512-bf16 CPU);
- `onnxruntime-genai fp32 | int4`: ONNX Runtime GenAI on its model builder's output (`--ort-dir`).

Each row runs in its own child process (a fresh engine, its own environment such as CT2_FORCE_CPU_ISA) and
reports: time to first token (p50/p95 over the prompts, from the call to the first token), decode tokens/s
(decoded steps - 1 over the time from the first token to the end, EOS step counted, as benchmarks/ask_latency.py),
greedy token ids (max `--max-new-tokens`, stop at EOS, no repetition penalty: the pure engine), and for `--k`
candidates sampled together (temperature 0.8, top-p 0.95, exactly `--k-tokens` tokens each, EOS ignored) the
wall time, the aggregate tokens/s and the ratio to ONE sampled answer of the same length. Engines that cannot
sample k sequences together (llama-cpp-python's high-level API) sample one after another over the cached prompt,
as the app does; the row says which.

Greedy agreement: every row's answers against `transformers fp32` on the same prompts: identical token ids (the
whole answer), the first 8 tokens, the mean first divergence (benchmarks/ask_latency.py's agreement_metrics).

The load average is recorded before each row: the timings are only comparable between rows run under the same
load. Prints a table, writes JSON (default docs/results/serving/engines.json) with the CPU model and flags and the
engine versions.

    python benchmarks/serving_engines.py --model-dir VERSION_DIR [--work-dir DIR] [--prompts 50]
        [--rows ...] [--ov-dir DIR] [--ort-dir DIR] [--squad PATH] [--threads N]

On a busy machine the reference row can run in a second process beside the engine rows (same prompt settings, one
shared `--answers-dir`, different `--work-dir` and `--out`), then `--merge A.json B.json --answers-dir DIR` joins
them and computes the agreement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402  (after the sys.path line above)

RESULTS = ROOT / "docs" / "results" / "serving" / "engines.json"
SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"  # benchmarks may read ../shared
REFERENCE = "transformers fp32"
PASSAGES = 4
# The app feeds chunks of ~200 tokens, not whole squad paragraphs (some pass 300 words): each passage is cut to
# this many words, which makes the 4-passage prompts ~700-800 tokens like the app's.
PASSAGE_WORDS = 120


class EngineBenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says why."""


@dataclass(frozen=True)
class Row:
    label: str
    engine: str  # transformers | llamacpp | ctranslate2 | openvino | ortgenai
    variant: str
    prefix_cache: bool = False
    env: tuple[tuple[str, str], ...] = ()
    speed_only: bool = False  # a speed variant of another row: timed on --speed-prompts only, no k-candidates


ROWS = {
    r.label: r
    for r in (
        Row(REFERENCE, "transformers", "fp32"),
        Row("llama.cpp f16", "llamacpp", "f16"),
        Row("llama.cpp f16 +prefix", "llamacpp", "f16", prefix_cache=True, speed_only=True),
        Row("llama.cpp q8_0 +prefix", "llamacpp", "q8_0", prefix_cache=True, speed_only=True),
        Row("llama.cpp q8_0", "llamacpp", "q8_0"),
        Row("llama.cpp q4_K_M", "llamacpp", "q4_K_M"),
        Row("ctranslate2 float32", "ctranslate2", "float32"),
        Row("ctranslate2 int8_float32", "ctranslate2", "int8_float32"),
        Row("ctranslate2 int8", "ctranslate2", "int8"),
        Row("ctranslate2 int8 +prefix", "ctranslate2", "int8", prefix_cache=True, speed_only=True),
        Row(
            "ctranslate2 int8 AVX2",
            "ctranslate2",
            "int8",
            env=(("CT2_FORCE_CPU_ISA", "AVX2"),),
            speed_only=True,
        ),
        Row(
            "ctranslate2 float32 AVX2",
            "ctranslate2",
            "float32",
            env=(("CT2_FORCE_CPU_ISA", "AVX2"),),
            speed_only=True,
        ),
        Row("openvino fp32", "openvino", "fp32"),
        Row("openvino fp16", "openvino", "fp16"),  # fp16 weights, f32 compute
        Row("openvino int8", "openvino", "int8"),
        Row("openvino int4", "openvino", "int4"),
        Row("onnxruntime-genai fp32", "ortgenai", "fp32"),
        Row("onnxruntime-genai int4", "ortgenai", "int4"),
    )
}
ENGINE_MODULES = {
    "transformers": "transformers",
    "llamacpp": "llama_cpp",
    "ctranslate2": "ctranslate2",
    "openvino": "openvino_genai",
    "ortgenai": "onnxruntime_genai",
}
ENGINE_DISTS = {
    "transformers": ("torch", "transformers"),
    "llamacpp": ("llama-cpp-python",),
    "ctranslate2": ("ctranslate2",),
    "openvino": ("openvino", "openvino-genai", "openvino-tokenizers"),
    "ortgenai": ("onnxruntime", "onnxruntime-genai"),
}


# ---- prompts (pure) ------------------------------------------------------------------------------------
def rag_items(
    data: dict[str, Any], n: int, passages: int = PASSAGES, words: int = PASSAGE_WORDS
) -> list[dict[str, Any]]:
    """`n` fixed questions, each with `passages` passages: its own paragraph and the next ones of its article.

    Questions come from evenly spaced paragraphs (file order) of articles with at least `passages` paragraphs;
    the gold paragraph's position rotates 1..passages so no engine is measured on one layout only.
    """
    slots = [
        (article, i)
        for article in data["data"]
        if len(article["paragraphs"]) >= passages
        for i, p in enumerate(article["paragraphs"])
        if p["qas"]
    ]
    if n <= 0 or not slots:
        return []
    stride = max(1, len(slots) // n)
    items = []
    for k, (article, i) in enumerate(slots[::stride][:n]):
        paragraphs = article["paragraphs"]
        chosen = [(i + d) % len(paragraphs) for d in range(1, passages)]  # the next paragraphs, wrapping
        gold_at = k % passages
        order = chosen[:gold_at] + [i] + chosen[gold_at:]
        qa = paragraphs[i]["qas"][0]
        items.append(
            {
                "id": qa["id"],
                "question": qa["question"],
                "gold_position": gold_at + 1,
                "passages": [
                    {
                        "text": cut_words(paragraphs[j]["context"], words),
                        "source": f"squad2/{article['title']}",
                    }
                    for j in order
                ],
            }
        )
    return items


def cut_words(text: str, words: int) -> str:
    """The first `words` words of `text` (whitespace-split), the whole text when shorter."""
    parts = text.split()
    return " ".join(parts[:words])


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every prompt shares (0 for no prompts)."""
    if not prompts:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return n


# ---- measurements (pure) -------------------------------------------------------------------------------
def summarise_greedy(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """TTFT percentiles and aggregate decode tokens/s over greedy runs.

    A run: `ttft_s`, `decode_s` (first token -> end), `steps` (decoded tokens, the EOS step included). Decode =
    sum(steps - 1) / sum(decode_s) over runs of >= 2 steps, as benchmarks/ask_latency.py counts it.
    """
    if not runs:
        return {"prompts": 0}
    ttft = sorted(r["ttft_s"] for r in runs)
    usable = [r for r in runs if r["steps"] >= 2 and r["decode_s"] > 0]
    span = sum(r["decode_s"] for r in usable)
    return {
        "prompts": len(runs),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p95_s": round(ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))], 3),
        "decode_tok_s": round(sum(r["steps"] - 1 for r in usable) / span, 1) if span > 0 else None,
        "mean_prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in runs), 1),
        "mean_answer_tokens": round(statistics.mean(len(r["ids"]) for r in runs), 1),
    }


def summarise_k(single_s: Sequence[float], k_s: Sequence[float], k: int, tokens: int) -> dict[str, Any]:
    """k candidates together vs one answer of the same length: wall times (median) and aggregate tokens/s."""
    if not single_s or not k_s:
        return {}
    one, together = statistics.median(single_s), statistics.median(k_s)
    return {
        "k": k,
        "tokens_each": tokens,
        "single_wall_s": round(one, 3),
        "k_wall_s": round(together, 3),
        "k_over_single": round(together / one, 2) if one > 0 else None,
        "k_aggregate_tok_s": round(k * tokens / together, 1) if together > 0 else None,
    }


def agreement(
    reference: dict[str, list[int]], answers: dict[str, list[int]], first_n: int = 8
) -> dict[str, Any]:
    """benchmarks/ask_latency.agreement_metrics over the prompts both rows answered (token ids; text unused)."""
    from benchmarks.ask_latency import agreement_metrics

    keys = [k for k in reference if k in answers]
    pairs = [
        {
            "key": k,
            "text_a": json.dumps(answers[k]),
            "text_b": json.dumps(reference[k]),
            "tokens_a": answers[k],
            "tokens_b": reference[k],
        }
        for k in keys
    ]
    result = agreement_metrics(pairs, first_n)
    result.pop("examples", None)
    return result


# ---- engines (child side) --------------------------------------------------------------------------------
class Engine:
    """One engine on one model file: greedy with first-token timing, and k sampled candidates together."""

    sampled_together = True

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        raise NotImplementedError

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        """Sample `k` candidates of exactly `tokens` tokens; returns the tokens generated."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class TransformersEngine(Engine):
    def __init__(self, model_dir: Path, threads: int, eos: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.eos = eos

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]), use_cache=True)
            for _ in range(max_new):
                token = int(out.logits[0, -1].argmax())
                yield token
                if token == self.eos:
                    return
                out = self.model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        torch = self.torch
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                top_k=0,
                num_return_sequences=k,
                min_new_tokens=tokens,
                max_new_tokens=tokens,
                pad_token_id=self.eos,
            )
        return int(out.shape[0] * (out.shape[1] - len(ids)))


class LlamaCppEngine(Engine):
    sampled_together = False  # the high-level API has one sequence per context: k answers one after another

    def __init__(self, gguf: Path, threads: int, eos: int, prefix: list[int] | None) -> None:
        from llama_cpp import Llama

        from app.backends.llamacpp_lm import llama_options

        self.llm = Llama(model_path=str(gguf), **llama_options(threads, 4096))
        self.eos = eos
        self.prefix_state = None
        if prefix:
            self.llm.reset()
            self.llm.eval(prefix)
            self.prefix_state = self.llm.save_state()

    def _start(self) -> None:
        if self.prefix_state is not None:
            self.llm.load_state(self.prefix_state)  # generate() then prefills only what follows the prefix
        else:
            self.llm.reset()

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        self._start()
        stream = self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        for n, token in enumerate(stream, start=1):
            yield token
            if token == self.eos or n >= max_new:
                return

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        self.llm.reset()
        done = 0
        for i in range(k):  # the prompt's KV cache is kept: later candidates prefill one token
            self.llm.set_seed(seed + i)
            stream = self.llm.generate(ids, temp=0.8, top_k=0, top_p=0.95, min_p=0.0, repeat_penalty=1.0)
            for n, _ in enumerate(stream, start=1):  # EOS ignored: exactly `tokens` tokens
                if n >= tokens:
                    break
            done += tokens
        return done

    def close(self) -> None:
        self.llm.close()


class CTranslate2Engine(Engine):
    def __init__(
        self, folder: Path, compute_type: str, threads: int, tokenizer: Any, prefix: list[int] | None
    ):
        import ctranslate2

        self.gen = ctranslate2.Generator(
            str(folder), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        self.tok = tokenizer
        self.prefix = tokenizer.convert_ids_to_tokens(prefix) if prefix else None
        self.prefix_len = len(prefix or [])

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        tokens = self.tok.convert_ids_to_tokens(ids)
        extra: dict[str, Any] = {}
        if self.prefix:
            tokens = tokens[self.prefix_len :]
            extra = {"static_prompt": self.prefix, "cache_static_prompt": True}
        for step in self.gen.generate_tokens(tokens, max_length=max_new, sampling_topk=1, **extra):
            yield step.token_id

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        import ctranslate2

        ctranslate2.set_random_seed(seed)
        results = self.gen.generate_batch(
            [self.tok.convert_ids_to_tokens(ids)],
            max_length=tokens,
            min_length=tokens,
            sampling_topk=0,
            sampling_topp=0.95,
            sampling_temperature=0.8,
            num_hypotheses=k,
            include_prompt_in_result=False,
        )
        return sum(len(h) for h in results[0].sequences_ids)


class OpenVinoEngine(Engine):
    def __init__(self, folder: Path, threads: int, prefix_cache: bool) -> None:
        import openvino_genai as ov_genai

        self.ov_genai = ov_genai
        # Prefix caching off: otherwise the k-candidate call reuses the KV blocks of the single call just before it
        # and the ratio compares a prefill with none (llama.cpp and CTranslate2 rows start each call cold too).
        scheduler = ov_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = prefix_cache
        self.pipe = ov_genai.LLMPipeline(
            str(folder),
            "CPU",
            scheduler_config=scheduler,
            INFERENCE_NUM_THREADS=threads,
            INFERENCE_PRECISION_HINT="f32",
        )

    def _inputs(self, ids: list[int]) -> Any:
        import numpy as np
        import openvino as ov

        arr = np.array([ids], dtype=np.int64)
        return self.ov_genai.TokenizedInputs(ov.Tensor(arr), ov.Tensor(np.ones_like(arr)))

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        """generate() blocks until the end: it runs in a thread and a StreamerBase hands over each token id."""
        import queue
        import threading

        ov_genai = self.ov_genai
        tokens: queue.Queue[int | None] = queue.Queue()

        class Streamer(ov_genai.StreamerBase):  # type: ignore[misc,name-defined]
            def write(self, token: Any) -> Any:
                for t in token if isinstance(token, list) else [token]:
                    tokens.put(int(t))
                return ov_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                tokens.put(None)

        cfg = ov_genai.GenerationConfig(max_new_tokens=max_new, do_sample=False, repetition_penalty=1.0)
        worker = threading.Thread(target=self.pipe.generate, args=(self._inputs(ids), cfg, Streamer()))
        worker.start()
        while (token := tokens.get()) is not None:
            yield token
        worker.join()

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        cfg = self.ov_genai.GenerationConfig(
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            num_return_sequences=k,
            rng_seed=seed,
        )
        out = self.pipe.generate(self._inputs(ids), cfg)
        return sum(len(t) for t in out.tokens)


class OrtGenAIEngine(Engine):
    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        self.model = og.Model(config)
        self.threads = threads

    def greedy(self, ids: list[int], max_new: int) -> Iterator[int]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens([ids])
        while not gen.is_done():
            gen.generate_next_token()
            yield int(gen.get_next_tokens()[0])

    def sample(self, ids: list[int], k: int, tokens: int, seed: int) -> int:
        """k copies of the prompt in one batch (ORT GenAI allows num_return_sequences > 1 only for beam search)."""
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=len(ids) + tokens,
            min_length=len(ids) + tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            random_seed=seed,
            batch_size=k,
        )
        gen = og.Generator(self.model, params)
        gen.append_tokens([ids] * k)
        while not gen.is_done():
            gen.generate_next_token()
        return sum(len(gen.get_sequence(i)) - len(ids) for i in range(k))


def open_engine(row: Row, spec: dict[str, Any], tokenizer: Any, prefix: list[int] | None) -> Engine:
    threads, eos = spec["threads"], spec["eos"]
    files = spec["files"]
    if row.engine == "transformers":
        return TransformersEngine(Path(spec["model_dir"]), threads, eos)
    if row.engine == "llamacpp":
        return LlamaCppEngine(Path(files[f"gguf_{row.variant}"]), threads, eos, prefix)
    if row.engine == "ctranslate2":
        return CTranslate2Engine(Path(files["ct2"]), row.variant, threads, tokenizer, prefix)
    if row.engine == "openvino":
        return OpenVinoEngine(Path(files[f"ov_{row.variant}"]), threads, row.prefix_cache)
    if row.engine == "ortgenai":
        return OrtGenAIEngine(Path(files[f"ort_{row.variant}"]), threads)
    raise EngineBenchError(f"unknown engine {row.engine}")


def timed_greedy(engine: Engine, ids: list[int], max_new: int, eos: int) -> dict[str, Any]:
    start = time.perf_counter()
    first = None
    out: list[int] = []
    steps = 0
    for token in engine.greedy(ids, max_new):
        if first is None:
            first = time.perf_counter()
        steps += 1
        if token == eos:
            break
        out.append(token)
        if steps >= max_new:
            break
    end = time.perf_counter()
    first = first or end
    return {
        "ids": out,
        "steps": steps,
        "ttft_s": first - start,
        "decode_s": end - first,
        "prompt_tokens": len(ids),
    }


def answers_path(folder: Path, label: str) -> Path:
    """Where a row's greedy token ids are kept (one JSON per row, keyed by question id)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (label.replace(" ", "_").replace("+", "p") + ".json")


def read_answers(folder: Path, label: str) -> dict[str, list[int]]:
    path = answers_path(folder, label)
    return json.loads(path.read_text()) if path.is_file() else {}


def run_row(row: Row, spec: dict[str, Any]) -> dict[str, Any]:
    """Child process: load the engine, answer every prompt greedily, then the k-candidate timing."""
    import resource

    from model_store.loading import load_tokenizer

    tokenizer = load_tokenizer(spec["model_dir"])
    prompts: dict[str, list[int]] = spec["prompts"]
    if row.speed_only:
        prompts = dict(list(prompts.items())[: spec["speed_prompts"]])
    prefix = list(next(iter(prompts.values()))[: spec["prefix_len"]]) if row.prefix_cache else None
    t0 = time.perf_counter()
    engine = open_engine(row, spec, tokenizer, prefix)
    load_s = time.perf_counter() - t0
    eos = spec["eos"]
    warm = next(iter(prompts.values()))
    timed_greedy(
        engine, warm, 8, eos
    )  # first-call set-up (allocations, kernel choice) is not a prompt's cost
    runs = {}
    store = answers_path(Path(spec["answers_dir"]), row.label)
    for key, ids in prompts.items():
        runs[key] = timed_greedy(engine, ids, spec["max_new_tokens"], eos)
        # after every prompt: a row cut short by its time limit still leaves its answers for the agreement
        store.write_text(json.dumps({k: r["ids"] for k, r in runs.items()}))
    k_result: dict[str, Any] = {}
    if spec["k"] > 0 and not row.speed_only and row.label != REFERENCE:
        single, together = [], []
        for i, ids in enumerate(list(prompts.values())[: spec["k_prompts"]]):
            t = time.perf_counter()
            engine.sample(ids, 1, spec["k_tokens"], seed=i)
            single.append(time.perf_counter() - t)
            t = time.perf_counter()
            made = engine.sample(ids, spec["k"], spec["k_tokens"], seed=i)
            together.append(time.perf_counter() - t)
            if made != spec["k"] * spec["k_tokens"]:
                raise EngineBenchError(
                    f"{row.label}: sampled {made} tokens, expected {spec['k'] * spec['k_tokens']}"
                )
        k_result = summarise_k(single, together, spec["k"], spec["k_tokens"])
        k_result["sampled_together"] = engine.sampled_together
    engine.close()
    return {
        "load_s": round(load_s, 2),
        "greedy": summarise_greedy(list(runs.values())),
        # the prompts the speed-only variants run on, so every row can be compared with them on equal terms
        "greedy_speed_prompts": summarise_greedy(list(runs.values())[: spec["speed_prompts"]]),
        "k_candidates": k_result,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


# ---- parent side ---------------------------------------------------------------------------------------
def missing_engine(row: Row, files: dict[str, str]) -> str | None:
    """Why a row cannot run here (engine not importable, model files not converted), None when it can."""
    import importlib.util

    module = ENGINE_MODULES[row.engine]
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    needed = {
        "llamacpp": f"gguf_{row.variant}",
        "ctranslate2": "ct2",
        "openvino": f"ov_{row.variant}",
        "ortgenai": f"ort_{row.variant}",
    }.get(row.engine)
    if needed and not files.get(needed):
        return f"no {needed} model files (conversion skipped or failed)"
    return None


def engine_versions(engine: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ENGINE_DISTS[engine]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - t0, 2)


def folder_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1)


def convert_models(
    model_dir: Path, work: Path, rows: Sequence[Row], args: argparse.Namespace
) -> dict[str, Any]:
    """The model files each row needs, converted now (timed) unless given; returns paths and conversion records."""
    import importlib.util

    files: dict[str, str] = {}
    conversions: dict[str, dict[str, Any]] = {}
    engines = {r.engine for r in rows}
    variants = {(r.engine, r.variant) for r in rows}
    if "llamacpp" in engines and importlib.util.find_spec("llama_cpp") is not None:
        from model_store.gguf import export_gguf

        for outtype in ("f16", "q8_0"):
            if ("llamacpp", outtype) in variants or (outtype == "f16" and ("llamacpp", "q4_K_M") in variants):
                target = work / f"gguf-{outtype}"
                target.mkdir(parents=True, exist_ok=True)
                for item in model_dir.iterdir():  # the converter writes next to the weights: link them in
                    if (
                        item.is_file()
                        and not item.name.endswith(".gguf")
                        and not (target / item.name).exists()
                    ):
                        os.link(item, target / item.name)
                record, seconds = timed(export_gguf, target, outtype)
                files[f"gguf_{outtype}"] = str(target / record["file"])
                conversions[f"gguf {outtype}"] = {"seconds": seconds, "mb": round(record["bytes"] / 1e6, 1)}
        if ("llamacpp", "q4_K_M") in variants:
            out, seconds = timed(quantize_gguf, Path(files["gguf_f16"]), work / "model.q4_K_M.gguf", "q4_K_M")
            files["gguf_q4_K_M"] = str(out)
            conversions["gguf q4_K_M (from f16)"] = {"seconds": seconds, "mb": folder_mb(out)}
    if "ctranslate2" in engines and importlib.util.find_spec("ctranslate2") is not None:
        out, seconds = timed(convert_ct2, model_dir, work / "ct2")
        files["ct2"] = str(out)
        conversions["ctranslate2 float32"] = {"seconds": seconds, "mb": folder_mb(out)}
    for engine, flag, key in (("openvino", args.ov_dir, "ov"), ("ortgenai", args.ort_dir, "ort")):
        if (
            engine in engines and flag
        ):  # converted outside (their converters conflict with the project's pins)
            for _, variant in sorted(v for v in variants if v[0] == engine):
                folder = Path(flag) / f"{key}-{variant}"
                if folder.is_dir():
                    files[f"{key}_{variant}"] = str(folder)
    return {"files": files, "conversions": conversions}


def quantize_gguf(src: Path, dst: Path, kind: str) -> Path:
    """llama.cpp's own quantiser through the bindings (llama-quantize is not installed with llama-cpp-python)."""
    import llama_cpp

    ftype = {"q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise EngineBenchError(f"llama_model_quantize {src} -> {kind} failed (rc {rc})")
    return dst


def convert_ct2(model_dir: Path, out: Path) -> Path:
    """CTranslate2's converter in a child process (it loads the model with transformers), float32 storage."""
    cmd = [
        sys.executable,
        "-m",
        "ctranslate2.converters.transformers",
        "--model",
        str(model_dir),
        "--output_dir",
        str(out),
        "--quantization",
        "float32",
        "--force",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EngineBenchError(f"ct2 conversion failed: {done.stderr.strip().splitlines()[-1:]}")
    return out


def build_prompts(
    model_dir: Path, squad: Path, n: int, words: int
) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Prompt token ids keyed by question id, rendered exactly as the app renders them."""
    from app.backends.base import PromptCodec
    from retrieval.prompt import render_prompt

    try:
        data = json.loads(squad.read_text())
    except (OSError, ValueError) as e:
        raise EngineBenchError(f"cannot read squad2 from {squad} ({e}); pass --squad PATH") from e
    codec = PromptCodec.from_folder(model_dir)
    prompts = {}
    questions = {}
    for item in rag_items(data, n, PASSAGES, words):
        prompts[item["id"]] = codec.prompt_ids(render_prompt(item["question"], item["passages"]))
        questions[item["id"]] = item["question"]
    return prompts, {"eos": int(codec.tokenizer.eos_token_id), "questions": questions}


def run_child(row: Row, spec_path: Path, timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, **dict(row.env)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", row.label, "--spec", str(spec_path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"took longer than {timeout_s:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "reason": " | ".join(tail)}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise EngineBenchError(
            f"{model_dir} is not a model version folder (no config.json): pass --model-dir"
        )
    rows = [ROWS[label] for label in args.rows]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="engines-"))
    work.mkdir(parents=True, exist_ok=True)
    prompts, info = build_prompts(model_dir, Path(args.squad), args.prompts, args.passage_words)
    converted = convert_models(model_dir, work, rows, args)
    spec = {
        "model_dir": str(model_dir),
        "files": converted["files"],
        "prompts": prompts,
        "eos": info["eos"],
        "prefix_len": common_prefix_length(list(prompts.values())),
        "threads": args.threads,
        "max_new_tokens": args.max_new_tokens,
        "k": args.k,
        "k_tokens": args.k_tokens,
        "k_prompts": args.k_prompts,
        "speed_prompts": args.speed_prompts,
        "answers_dir": str(Path(args.answers_dir) if args.answers_dir else work / "answers"),
        "passage_words": args.passage_words,
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    result = {
        "benchmark": "serving_engines",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
        "cpu": {**machine.cpu(), "cores_usable": len(os.sched_getaffinity(0))},
        "python": platform.python_version(),
        "settings": {k: v for k, v in spec.items() if k not in ("prompts", "files")}
        | {"prompt_set": f"squad2-dev-half, {PASSAGES} passages, retrieval.prompt.render_prompt"},
        "conversions": converted["conversions"],
        "rows": [],
    }
    for row in rows:
        skip = missing_engine(row, converted["files"])
        entry: dict[str, Any] = {
            "row": row.label,
            "engine": row.engine,
            "variant": row.variant,
            "env": dict(row.env),
            "versions": engine_versions(row.engine),
        }
        if skip:
            entry.update(status="skipped", reason=skip)
        else:
            entry["load_avg_before"] = [round(x, 2) for x in os.getloadavg()]
            entry.update(run_child(row, spec_path, args.row_timeout))
        print(json.dumps(entry), file=sys.stderr)
        result["rows"].append(entry)
        add_agreement(result["rows"], Path(spec["answers_dir"]))
        write_json(result, Path(args.out))  # after every row: a long run cut short still leaves its rows
    result["complete"] = True
    return result


def merge_runs(paths: Sequence[str], answers_dir: Path) -> dict[str, Any]:
    """One result from several runs on the same prompts (e.g. the reference and the engines in parallel)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    prompts = {
        json.dumps(r["settings"].get("prefix_len")) + str(r["settings"].get("passage_words")) for r in runs
    }
    if len(prompts) != 1:
        raise EngineBenchError("the runs used different prompt settings: they cannot be merged")
    merged = {**runs[0], "rows": [row for r in runs for row in r["rows"]], "merged_from": list(paths)}
    merged["complete"] = all(r.get("complete") for r in runs)
    merged["conversions"] = {k: v for r in runs for k, v in r["conversions"].items()}
    add_agreement(merged["rows"], answers_dir)
    return merged


def add_agreement(rows: list[dict[str, Any]], answers_dir: Path) -> None:
    """Each row's greedy agreement with the reference's answers in `answers_dir` (from this run or an earlier
    one with the same --work-dir, hence the same prompts), over the prompts both answered."""
    reference = read_answers(answers_dir, REFERENCE)
    for r in rows:
        mine = read_answers(answers_dir, r["row"])
        if reference and mine and not ROWS[r["row"]].speed_only:
            r["agreement_vs_fp32"] = agreement(reference, mine)


def write_json(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


# ---- report ------------------------------------------------------------------------------------------
COLUMNS = (
    "row",
    "load",
    "TTFT p50 s",
    "decode tok/s",
    "k=4 agg tok/s",
    "k=4/1",
    "agree fp32",
    "first 8",
    "RSS MB",
)


def table_row(r: dict[str, Any]) -> list[str]:
    if r["status"] != "ok":
        return [r["row"], "", r["status"], r.get("reason", "")[:60], "", "", "", "", ""]
    g, k, a = r["greedy"], r.get("k_candidates") or {}, r.get("agreement_vs_fp32") or {}
    load = r.get("load_avg_before") or [None]
    together = "" if k.get("sampled_together", True) else " seq"
    return [
        r["row"],
        _num(load[0], ".2f"),
        _num(g.get("ttft_p50_s"), ".3f"),
        _num(g.get("decode_tok_s"), ".1f"),
        _num(k.get("k_aggregate_tok_s"), ".1f") + (together if k else ""),
        _num(k.get("k_over_single"), ".2f"),
        _num(a.get("token_identical_rate"), ".0%"),
        _num(a.get("first_n_tokens_rate"), ".0%"),
        _num(r.get("peak_rss_mb"), ".0f"),
    ]


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def print_report(result: dict[str, Any]) -> None:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    lines += [" | ".join(table_row(r)) for r in result["rows"]]
    print("\n".join(lines))
    for name, c in result["conversions"].items():
        print(f"conversion {name}: {c['seconds']} s, {c['mb']} MB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="a published version folder (safetensors + tokenizer)")
    p.add_argument("--work-dir", help="where converted models go (default: a new temp folder)")
    p.add_argument("--squad", default=str(SQUAD))
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--k-tokens", type=int, default=64)
    p.add_argument("--k-prompts", type=int, default=3)
    p.add_argument("--speed-prompts", type=int, default=10, help="prompts for the speed-only variant rows")
    p.add_argument("--passage-words", type=int, default=PASSAGE_WORDS)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), metavar="ROW")
    p.add_argument(
        "--ov-dir", help="folder holding ov-fp32/, ov-int8/, ov-int4/ (optimum-cli export openvino)"
    )
    p.add_argument("--ort-dir", help="folder holding ort-fp32/, ort-int4/ (onnxruntime_genai.models.builder)")
    p.add_argument("--row-timeout", type=float, default=1800)
    p.add_argument("--answers-dir", help="where rows keep their greedy answers (default: WORK_DIR/answers)")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine the rows of earlier runs (same prompts, shared --answers-dir) into --out, agreement redone",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.child and not args.merge and not args.model_dir:
        p.error("--model-dir is required")
    if args.merge and not args.answers_dir:
        p.error("--merge needs --answers-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(Path(args.spec).read_text())
        print(json.dumps(run_row(ROWS[args.child], spec)))
        return 0
    try:
        result = merge_runs(args.merge, Path(args.answers_dir)) if args.merge else run(args)
    except EngineBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_json(result, Path(args.out))
    print_report(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
