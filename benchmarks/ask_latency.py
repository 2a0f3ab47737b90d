"""Ask latency of the app on the default model on CPU, per generator backend, and greedy agreement between them.

Runs in a temporary RAGQA_HOME: the offline default model (SmolLM2-135M, converted from the GGUF, ~20 s, or its
files hard-linked from `--model-dir`), its GGUF written into the version folder by
`model_store.gguf.export_gguf` (`--gguf-type`, f16 by default, the type the app publishes; a GGUF already in `--model-dir` is never reused,
so the file measured is the one the app publishes), and the bundled demo corpus ingested with the real embedder.

Rows (`--backends`, `--dtypes`):
- `transformers float32` / `transformers bfloat16`: the app (`QAService.stream`, backend=transformers);
- `llamacpp q8_0`: the app with backend=llamacpp on the version's GGUF, with the config's repetition penalty
  (1.1; the penalty column says so), and `llamacpp q8_0 (penalty 1.0)` (`--penalty-row`), the same app with the
  penalty off, which shows what llama.cpp's penalty sampler costs per token;
- `raw llama.cpp q8_0`: `llama_cpp.Llama` on the SAME file, opened with the app's llama.cpp settings
  (`app.backends.llamacpp_lm.llama_options`: same n_ctx, threads = `default_threads()`, batch, flash attention;
  the JSON records both contexts' settings and whether they match), fed the SAME prompt token ids the app built
  for each question (`qa.build_prompt` + the model's `codec.prompt_ids`), greedy, no penalty (the pure engine),
  and `raw llama.cpp q8_0 (penalty 1.1)`: the same with llama.cpp's own penalty sampler at the app's setting (the
  same sampling work per token as the app row, which `vs raw` compares it with; `vs_raw_engine` in the JSON
  compares every row with the pure engine).

How the speed rows are made comparable:
- Same questions (`--questions` of the 20 below, k=4 passages), same max_new_tokens, greedy everywhere.
- For each question the raw row runs right after the app's llamacpp row (interleaved, so the machine's load hits
  both alike) and generates EXACTLY as many tokens as the app did for that question, ignoring EOS, so both decode
  the same number of steps over the same context. The app stops at EOS, so its answers (and the raw row's) are
  usually shorter than max_new_tokens.
- Decode tokens/s = (decoded tokens - 1) / (time from the first token to the end), summed over answers. Decoded
  tokens count the EOS step: an answer that ends with EOS decoded `completion_tokens + 1` tokens
  (GenerationStats leaves EOS out of completion_tokens in every backend and says `eos`), and the time to the end
  includes that step; counting it for every row keeps the rows comparable. The app's own
  figure (GenerationStats.decode_tokens_per_s, aggregated) is kept in the JSON as `app_reported_tokens_per_s`.
- Prefix cache: llama-cpp-python reuses the longest common prefix of the previous prompt (the system prompt is
  shared by every question). Both the app's and the raw llama.cpp contexts are reset before each timed
  question, so every llamacpp/raw time to first token is a full prefill, like transformers'.
- Time to first token and total are measured from the start of the generation call (app rows: GenerationStats,
  which starts before the chat template is applied; raw: before `Llama.generate`), so retrieval is left out and
  the rows compare engines; the app rows also report retrieval and the request's own first-token/total times
  (AskResult.timings_ms, from the start of the request).

Ratios: `vs raw` = decode tok/s / raw llama.cpp's (target for the app's llamacpp row: >= 0.95); `vs fp32` =
decode tok/s / transformers float32's (target: >= 3).

Memory-bandwidth bound (measured read bandwidth, a torch sum over a 1 GiB buffer, / bytes one decode step reads):
transformers rows count every Linear weight plus the lm_head (tied to the embedding, counted once), the norms and
one embedding row; llamacpp rows count the GGUF's tensor bytes (read from its header: quantised weights as stored,
the tied token embedding read in full as the output matrix). The KV-cache read is left out of both.

Greedy agreement (`--agreement-questions N`, 50 = the 20 demo questions + 30 from squad2-dev-half): the demo
questions get the app's prompts (QAService retrieval and build_prompt on the demo corpus); squad2 questions (one
per evenly spaced paragraph of `--squad`, a tuning/eval set) get their paragraph as the single passage through
retrieval.prompt.render_prompt. Each prompt is answered greedily by every backend through its served model's
`stream` (same max_new_tokens, the config's penalty; answers the speed run already produced for the identical
prompt ids are reused). Reported for llamacpp vs transformers float32 and, as the yardstick of a harmless numeric
change, transformers bfloat16 vs float32: exact-text agreement, the share of answers whose first N tokens match,
the mean position of the first differing token (answers re-tokenised with the version's tokenizer), and 2
disagreeing examples.

Retrieval at 10k and 100k chunks (`--sizes`) reuses benchmarks/retrieval_latency.py (synthetic clustered corpus,
the index kind the app builds at that size) plus the real query-embedding time.

Timings are never asserted. Prints rich tables and writes benchmarks/results/ask_latency.json.

    python benchmarks/ask_latency.py [--questions 20] [--max-new-tokens 64] [--backends transformers llamacpp raw]
        [--dtypes float32 bfloat16] [--decodes generate] [--gguf-type f16] [--agreement-questions 50]
        [--model-dir PATH] [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if (
    str(ROOT) not in sys.path
):  # `python benchmarks/ask_latency.py` (make bench) imports benchmarks.retrieval_latency
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average  # noqa: E402  (after the sys.path line above)
from model_store.files import link_or_copy  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ask_latency.json"
DEMO_CORPUS = ROOT / "app" / "demo_corpus"
SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"  # benchmarks may read ../shared
BACKEND_CHOICES = ("transformers", "llamacpp", "raw")
GGUF_TYPES = ("q8_0", "f16", "bf16", "f32")
MAX_SQUAD = 30
FIRST_N = 8  # agreement: share of answers whose first FIRST_N tokens match

QUESTIONS = [
    "How do I install the app?",
    "Where does the app keep its state?",
    "How do I add my documents?",
    "Which file formats can I ingest?",
    "What happens when I ingest a folder again?",
    "Why are some files skipped during ingest?",
    "How do I ask a question from the command line?",
    "What do the numbers in square brackets mean in an answer?",
    "Can I ask a follow-up question?",
    "How do I rank the alternative answers?",
    "How do I correct a wrong answer?",
    "How do I export my feedback?",
    "How do I retrain the model?",
    "What does the evaluation gate check before publishing?",
    "How do I roll back to an earlier model version?",
    "How do I list the model versions?",
    "What is the default model?",
    "How do I change the number of passages given to the model?",
    "What is the longest answer the model writes by default?",
    "Which address does the server listen on?",
]
WARM_UP = ["What is this app for?", "How do I start the chat UI?"]


class AskBenchError(RuntimeError):
    """The benchmark cannot run as asked (a backend is missing, a file cannot be read): the message says why."""


# ---- machine ---------------------------------------------------------------------------------------
def memory_bandwidth(gib: float = 1.0, repeats: int = 7) -> dict[str, float]:
    """Read and copy bandwidth in GB/s (1e9 bytes) over a `gib` GiB fp32 buffer, with torch's threads.

    Read = `x.sum()` (reads every byte once, like a decode step reads the weights). Copy = `y.copy_(x)` counted as
    2 bytes moved per byte (read + write). Median and max of `repeats` runs.
    """
    import torch

    n = int(gib * (1 << 30)) // 4
    x = torch.ones(n, dtype=torch.float32)
    y = torch.empty_like(x)
    nbytes = x.numel() * x.element_size()
    x.sum()
    y.copy_(x)
    reads, copies = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        reads.append(nbytes / (time.perf_counter() - t0) / 1e9)
        t0 = time.perf_counter()
        y.copy_(x)
        copies.append(2 * nbytes / (time.perf_counter() - t0) / 1e9)
    return {
        "buffer_gib": gib,
        "read_gbps_median": round(statistics.median(reads), 2),
        "read_gbps_max": round(max(reads), 2),
        "copy_gbps_median": round(statistics.median(copies), 2),
        "copy_gbps_max": round(max(copies), 2),
        "torch_threads": torch.get_num_threads(),
    }


# ---- bytes one decode step reads ---------------------------------------------------------------------
def bytes_read_per_token(model: Any) -> dict[str, Any]:
    """Bytes of weights one batch-1 decode step reads, and the KV-cache bytes per context token.

    Every nn.Linear (q/k/v/o, gate/up/down, lm_head) is read in full; the input embedding is a lookup of one row
    (its matrix is read in full only as the tied lm_head, counted once there); norms are read in full.
    """
    import torch

    linear_params = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}
    linear = sum(p.numel() * p.element_size() for p in linear_params.values())
    embed = model.get_input_embeddings().weight
    norms = sum(
        p.numel() * p.element_size()
        for p in model.parameters()  # deduplicated: a tied matrix appears once
        if id(p) not in linear_params and p is not embed
    )
    tied = model.get_output_embeddings().weight is embed
    row = embed.shape[1] * embed.element_size()
    cfg = model.config
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * embed.element_size()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tied_embeddings": tied,
        "linear_bytes": linear,
        "norm_bytes": norms,
        "embedding_row_bytes": row,
        "weights_bytes_per_token": linear + norms + row,
        "kv_cache_bytes_per_context_token": kv_per_token,
    }


def gguf_bytes_per_token(tensors: Sequence[tuple[str, int, int]]) -> dict[str, Any]:
    """Bytes one decode step reads from a GGUF's tensors: `(name, stored bytes, rows)` per tensor.

    Every tensor is read in full, except `token_embd.weight` when the file has its own `output.weight`: then the
    embedding is a lookup of one row (bytes / rows). Without `output.weight` the embedding is tied and is read in
    full as the output matrix. Quantised tensors count their stored (quantised) bytes.
    """
    names = {name for name, _b, _r in tensors}
    total, row = 0, 0
    for name, nbytes, rows in tensors:
        if name == "token_embd.weight" and "output.weight" in names:
            row = nbytes // max(rows, 1)
            total += row
        else:
            total += nbytes
    return {
        "tied_embeddings": "output.weight" not in names,
        "embedding_row_bytes": row,
        "weights_bytes_per_token": total,
    }


def gguf_tensor_sizes(path: Path) -> list[tuple[str, int, int]]:
    """`(name, bytes, rows)` of every tensor in a GGUF file, from its header (memory-mapped, nothing loaded)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return [(t.name, int(t.n_bytes), int(t.shape[-1]) if len(t.shape) else 1) for t in reader.tensors]


# ---- the temporary home ----------------------------------------------------------------------------
def prepare_home(
    home: Path, model_dir: Path | None, gguf_type: str | None, *, starter: bool = False
) -> dict[str, Any]:
    """Registry with the default model as v0001 (+ its GGUF) and the demo corpus ingested, under `home`; with
    `starter`, the shipped starter published on top of it as the current version, as `ragqa setup` does.

    `model_dir`'s files are hard-linked (its GGUF files are not: the GGUF is exported here, by the function the
    app publishes with, and recorded in the manifest). Returns the GGUF record and the export time.
    """
    from app.config import AppConfig
    from model_store.base_model import ensure_base_model
    from model_store.registry import ModelRegistry
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.ingest import ingest

    os.environ["RAGQA_HOME"] = str(home)
    paths = AppConfig.load().paths
    registry = ModelRegistry(paths.models_dir)
    if model_dir is not None:
        if not (model_dir / "config.json").is_file():
            raise AskBenchError(f"--model-dir {model_dir} is not a converted model folder (no config.json)")
        models = paths.models_dir
        models.mkdir(parents=True)
        shutil.copytree(
            model_dir, models / "v0001", copy_function=link_or_copy, ignore=shutil.ignore_patterns("*.gguf")
        )
        _drop_gguf_record(models / "v0001" / "manifest.json")
        os.symlink("v0001", models / "current")
    else:
        ensure_base_model(registry)
        if starter:
            from training.starter import StarterError, publish_starter

            try:
                version, note = publish_starter(registry)
            except StarterError as e:
                raise AskBenchError(f"the starter was not published: {e}") from e
            if version is None:
                raise AskBenchError(f"the starter was not published: {note}")
    record: dict[str, Any] = {}
    if gguf_type is not None:
        from model_store.gguf import GgufExportError, export_gguf

        version = registry.current()
        assert version is not None
        t0 = time.perf_counter()
        try:
            record = export_gguf(version.path, gguf_type)
        except GgufExportError as e:
            raise AskBenchError(f"cannot export the {gguf_type} GGUF: {e}") from e
        record["export_s"] = round(time.perf_counter() - t0, 1)
        registry.record(version.name, "gguf", {k: v for k, v in record.items() if k != "export_s"})
    ingest(DEMO_CORPUS, paths.index_dir, SentenceTransformerEmbedder(), progress=False)
    return record


def _drop_gguf_record(manifest: Path) -> None:
    """The linked manifest is rewritten (a new file, never the linked one) without the source's GGUF record."""
    if not manifest.is_file():
        return
    data = json.loads(manifest.read_text())
    data.pop("gguf", None)
    manifest.unlink()  # a hard link to the source's manifest: write a fresh file instead
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---- pure helpers: rates, ratios, percentiles, agreement ----------------------------------------------
def decoded_tokens(generation: dict[str, Any]) -> int:
    """Tokens the engine decoded for one answer, counting the EOS step (see the module doc).

    `generation` is GenerationStats.to_json(): completion_tokens leaves EOS out in every backend, `eos` says
    whether the answer ended with one (a decode step that took the same time).
    """
    return int(generation.get("completion_tokens") or 0) + int(bool(generation.get("eos")))


def decode_span_s(generation: dict[str, Any]) -> float:
    """Seconds from the first token to the end of the stream (GenerationStats.to_json()'s decode_s)."""
    return float(generation.get("decode_s") or 0.0)


def decode_rate(answers: Sequence[dict[str, Any]]) -> float | None:
    """Aggregate decode tokens/s: sum over answers of (tokens - 1) / sum of decode spans (answers of >= 2 tokens)."""
    usable = [a for a in answers if a["tokens"] >= 2 and a["decode_s"] > 0]
    span = sum(a["decode_s"] for a in usable)
    return round(sum(a["tokens"] - 1 for a in usable) / span, 2) if span > 0 else None


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is missing or the reference is 0."""
    if value is None or not reference:
        return None
    return round(value / reference, 3)


def percentiles(xs: Sequence[float]) -> dict[str, float] | None:
    if not xs:
        return None
    return {"p50": round(float(np.percentile(xs, 50)), 1), "p95": round(float(np.percentile(xs, 95)), 1)}


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where two token lists differ (a length difference counts), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement_metrics(pairs: Sequence[dict[str, Any]], first_n: int = FIRST_N) -> dict[str, Any]:
    """Greedy agreement of two backends over the same prompts.

    Each pair: `text_a`, `text_b` (answers) and `tokens_a`, `tokens_b` (their token ids, one tokenizer). Returns
    the exact-text agreement rate, the share whose first `first_n` tokens match, the mean first-divergence
    position over the pairs that differ, and the first 2 disagreeing pairs as examples.
    """
    if not pairs:
        return {"prompts": 0}
    exact = [p["text_a"].strip() == p["text_b"].strip() for p in pairs]
    head = [list(p["tokens_a"][:first_n]) == list(p["tokens_b"][:first_n]) for p in pairs]
    splits = [first_divergence(p["tokens_a"], p["tokens_b"]) for p in pairs]
    diverged = [s for s in splits if s is not None]
    examples = [
        {
            "key": p.get("key"),
            "question": p.get("question"),
            "first_divergence": s,
            "a": p["text_a"],
            "b": p["text_b"],
        }
        for p, same, s in zip(pairs, exact, splits, strict=True)
        if not same
    ][:2]
    return {
        "prompts": len(pairs),
        "exact_text_rate": round(sum(exact) / len(pairs), 3),
        "first_n": first_n,
        "first_n_tokens_rate": round(sum(head) / len(pairs), 3),
        "token_identical_rate": round(sum(s is None for s in splits) / len(pairs), 3),
        "diverged": len(diverged),
        "mean_first_divergence": round(statistics.mean(diverged), 1) if diverged else None,
        "examples": examples,
    }


def pick_squad_questions(data: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """`n` fixed squad2 questions: the first question of `n` evenly spaced paragraphs (file order)."""
    paragraphs = [(a["title"], p) for a in data["data"] for p in a["paragraphs"] if p["qas"]]
    if n <= 0 or not paragraphs:
        return []
    stride = max(1, len(paragraphs) // n)
    picked = []
    for title, p in paragraphs[::stride][:n]:
        qa = p["qas"][0]
        picked.append(
            {
                "id": qa["id"],
                "title": title,
                "question": qa["question"],
                "context": p["context"],
                "answerable": not qa.get("is_impossible", False),
            }
        )
    return picked


def prompt_hash(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


# ---- the app's rows ----------------------------------------------------------------------------------
def open_service(
    backend: str, dtype: str, gguf_type: str, max_new_tokens: int, embedder: Any, **extra: Any
) -> Any:
    """A QAService on the temp home with the named backend; refuses to measure a silent fallback."""
    from app.config import AppConfig
    from app.qa import QAService

    cfg = AppConfig.load(
        backend=backend, dtype=dtype, gguf=gguf_type, max_new_tokens=max_new_tokens, k=4, **extra
    )
    qa = QAService(cfg, embedder=embedder)
    qa.warm_up()
    model = qa.generator.current()
    if model.backend != backend:
        raise AskBenchError(
            f"asked for the {backend} backend but {model.backend} serves: {qa.generator.fallback_reason}"
        )
    return qa


def ask_once(qa: Any, question: str, *, fresh: bool = True) -> dict[str, Any]:
    """One question through QAService.stream, with a fresh llama.cpp context (no prefix reuse), or with
    `fresh=False` as the server answers it: the context keeps the previous request's tokens and llama.cpp reuses
    their common prefix (the system prompt and the start of the user turn)."""
    model = qa.generator.current()
    if model.backend == "llamacpp" and fresh:
        model.llama.reset()
    result = None
    for kind, value in qa.stream(question):
        if kind == "done":
            result = value
    assert result is not None
    gen = result.generation
    messages, _ = qa.build_prompt(model, question, result.passages, [])
    ids = model.codec.prompt_ids(messages)
    span = decode_span_s(gen)
    return {
        "question": question,
        "retrieve_ms": result.timings_ms["retrieve"],
        "request_first_token_ms": result.timings_ms["first_token"],
        "request_total_ms": result.timings_ms["total"],
        "first_token_ms": gen.get("first_token_ms"),
        "total_ms": (gen.get("first_token_ms") or 0.0) + span * 1000,
        "prompt_tokens": gen.get("prompt_tokens"),
        "prompt_ids": ids,
        "prompt_ids_match": len(ids) == gen.get("prompt_tokens"),
        "completion_tokens": gen.get("completion_tokens"),
        "finish_reason": gen.get("finish_reason"),
        "tokens": decoded_tokens(gen),
        "decode_s": span,
        "app_rate": gen.get("decode_tokens_per_s"),
        "answer": result.answer,
    }


def raw_once(llm: Any, prompt_ids: Sequence[int], n_tokens: int, penalty: float = 1.0) -> dict[str, Any]:
    """Greedy, exactly `n_tokens` tokens (EOS ignored) on a fresh context.

    penalty 1.0: the pure engine. Another value: llama.cpp's own penalty sampler, the sampling the app asks for
    (its window is the context, `last_n_tokens_size` in llama_options), so the work per token is the same.
    """
    llm.reset()
    out: list[int] = []
    t0 = time.perf_counter()
    first: float | None = None
    for token in llm.generate(
        list(prompt_ids), temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=penalty
    ):
        if first is None:
            first = time.perf_counter()
        out.append(token)
        if len(out) >= n_tokens:
            break
    end = time.perf_counter()
    first = first or end
    return {
        "first_token_ms": (first - t0) * 1000,
        "total_ms": (end - t0) * 1000,
        "tokens": len(out),
        "decode_s": end - first,
        "token_ids": out,
    }


def summarise(label: str, answers: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    """One table row from per-answer measurements (app rows carry retrieval and request times)."""
    app = "retrieve_ms" in answers[0]
    rates = [a["app_rate"] for a in answers if a.get("app_rate")]
    return {
        "backend": label,
        **info,
        "answers": len(answers),
        "mean_prompt_tokens": round(statistics.mean(len(a["prompt_ids"]) for a in answers), 1)
        if "prompt_ids" in answers[0]
        else None,
        "mean_answer_tokens": round(statistics.mean(a["tokens"] for a in answers), 1),
        "stopped_at_eos": sum(a.get("finish_reason") == "stop" for a in answers) if app else None,
        "retrieve_ms": percentiles([a["retrieve_ms"] for a in answers]) if app else None,
        "request_first_token_ms": percentiles([a["request_first_token_ms"] for a in answers])
        if app
        else None,
        "request_total_ms": percentiles([a["request_total_ms"] for a in answers]) if app else None,
        "first_token_ms": percentiles(
            [a["first_token_ms"] for a in answers if a["first_token_ms"] is not None]
        ),
        "total_ms": percentiles([a["total_ms"] for a in answers]),
        "decode_tokens_per_s": decode_rate(answers),
        "app_reported_tokens_per_s": round(statistics.mean(rates), 2) if rates else None,
        "load_during": load_average(),
        "sample_answers": [a["answer"] for a in answers[:3]] if app else None,
        "_answers": answers,  # per-answer detail; replaced by a compact record before the JSON is written
    }


def timed_answers(qa: Any, questions: list[str], repeats: int) -> tuple[list[dict[str, Any]], float]:
    """Warm-up questions (one-off costs: oneDNN kernels, page faults), then every question `repeats` times."""
    t0 = time.perf_counter()
    for q in WARM_UP:
        ask_once(qa, q)
    warm_s = time.perf_counter() - t0
    return [ask_once(qa, q) for _ in range(repeats) for q in questions], warm_s


def transformers_phase(
    dtype: str, decode: str, questions: list[str], args: argparse.Namespace, embedder: Any
) -> tuple[dict[str, Any], Any]:
    """The transformers row for one dtype and decode path; returns it and the still-open service."""
    t0 = time.perf_counter()
    qa = open_service("transformers", dtype, "off", args.max_new_tokens, embedder)
    model = qa.generator.current()
    model.decode = decode
    load_s = time.perf_counter() - t0
    answers, warm_s = timed_answers(qa, questions, args.repeats)
    row = summarise(
        f"transformers {dtype}" + ("" if decode == "generate" else f" {decode}"),
        answers,
        kind="app",
        dtype=dtype,
        decode=decode,
        repetition_penalty=qa.config.repetition_penalty,
        model_load_s=round(load_s, 2),
        warm_up_s=round(warm_s, 2),
        bytes_per_token=bytes_read_per_token(model.model),
    )
    return row, qa


def open_raw_llama(gguf_path: Path, n_ctx: int) -> tuple[Any, dict[str, Any]]:
    """llama_cpp.Llama on the file with the app's context settings (threads = default_threads())."""
    from llama_cpp import Llama

    from app.backends.llamacpp_lm import default_threads, llama_options

    options = llama_options(default_threads(), n_ctx)
    return Llama(model_path=str(gguf_path), **options), options


SETTINGS_COMPARED = ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "flash_attn", "use_mmap")


def context_settings(llm: Any) -> dict[str, Any]:
    """The llama.cpp settings that decide speed, as the Llama object reports them (`__getstate__`)."""
    state = llm.__getstate__()
    return {k: state.get(k) for k in SETTINGS_COMPARED}


def llamacpp_phase(
    questions: list[str], args: argparse.Namespace, embedder: Any
) -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
    """App llamacpp row(s) and the raw llama.cpp row, interleaved question by question (see the module doc)."""
    t0 = time.perf_counter()
    qa = open_service("llamacpp", "auto", args.gguf_type, args.max_new_tokens, embedder)
    load_s = time.perf_counter() - t0
    model = qa.generator.current()
    qa_plain = None
    if args.penalty_row:
        qa_plain = open_service(
            "llamacpp", "auto", args.gguf_type, args.max_new_tokens, embedder, repetition_penalty=1.0
        )
    raw, options = (None, {})
    if "raw" in args.backends:
        raw, options = open_raw_llama(model.gguf_path, model.llama.n_ctx())
    settings = {"app": context_settings(model.llama)}
    if raw is not None:
        settings["raw"] = context_settings(raw)
        settings["raw_options"] = {k: v for k, v in options.items() if k != "verbose"}
        settings["match"] = settings["app"] == settings["raw"]

    for q in WARM_UP:
        warm = ask_once(qa, q)
        if raw is not None:
            raw_once(raw, warm["prompt_ids"], max(warm["tokens"], 2))
        if qa_plain is not None:
            ask_once(qa_plain, q)
    penalty = qa.config.repetition_penalty
    app_answers, raw_answers, raw_penalty_answers, plain_answers = [], [], [], []
    for _ in range(args.repeats):
        for q in questions:
            a = ask_once(qa, q)
            app_answers.append(a)
            if raw is not None:
                r = raw_once(raw, a["prompt_ids"], a["tokens"])
                raw_answers.append({**r, "prompt_ids": a["prompt_ids"], "answer": None})
                if penalty != 1.0:
                    r = raw_once(raw, a["prompt_ids"], a["tokens"], penalty)
                    raw_penalty_answers.append({**r, "prompt_ids": a["prompt_ids"], "answer": None})
            if qa_plain is not None:
                plain_answers.append(ask_once(qa_plain, q))

    label = f"llamacpp {args.gguf_type}"
    gguf_bytes = gguf_bytes_per_token(gguf_tensor_sizes(model.gguf_path))
    common = {"gguf": model.gguf_path.name, "threads": model.threads, "bytes_per_token": gguf_bytes}
    rows = [
        summarise(
            label,
            app_answers,
            kind="app",
            repetition_penalty=qa.config.repetition_penalty,
            model_load_s=round(load_s, 2),
            **common,
        )
    ]
    if qa_plain is not None:
        rows.append(
            summarise(f"{label} (penalty 1.0)", plain_answers, kind="app", repetition_penalty=1.0, **common)
        )
        qa_plain.generator.current().close()
    if raw is not None:
        rows.append(
            summarise(
                f"raw llama.cpp {args.gguf_type}", raw_answers, kind="raw", repetition_penalty=1.0, **common
            )
        )
        if raw_penalty_answers:
            rows.append(
                summarise(
                    f"raw llama.cpp {args.gguf_type} (penalty {penalty:g})",
                    raw_penalty_answers,
                    kind="raw",
                    repetition_penalty=penalty,
                    **common,
                )
            )
        raw.close()
    return rows, qa, settings


# ---- greedy agreement --------------------------------------------------------------------------------
def agreement_prompts(qa: Any, n: int, squad_path: Path) -> list[dict[str, Any]]:
    """The fixed prompt set: demo questions as the app prompts them, then squad2 questions on their paragraph."""
    from retrieval.prompt import render_prompt

    model = qa.generator.current()
    prompts = []
    for i, q in enumerate(QUESTIONS[: max(0, n)]):
        messages, _ = qa.build_prompt(model, q, qa.retrieve(q), [])
        prompts.append({"key": f"demo:{i}", "source": "demo", "question": q, "messages": messages})
    n_squad = min(MAX_SQUAD, n - len(prompts))
    if n_squad > 0:
        for item in pick_squad_questions(read_squad(squad_path), n_squad):
            passage = {"text": item["context"], "source": f"squad2/{item['title']}"}
            prompts.append(
                {
                    "key": f"squad2:{item['id']}",
                    "source": "squad2",
                    "question": item["question"],
                    "messages": render_prompt(item["question"], [passage]),
                }
            )
    return prompts


def read_squad(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AskBenchError(
            f"cannot read the squad2 questions from {path} ({e}); pass --squad PATH or fewer "
            f"--agreement-questions (at most {len(QUESTIONS)} use the demo questions only)"
        ) from e


def answer_prompts(
    qa: Any, prompts: list[dict[str, Any]], known: list[dict[str, Any]], label: str
) -> dict[str, dict[str, Any]]:
    """Greedy answers of the service's model to every prompt (the config's max_new_tokens and penalty).

    Answers in `known` (the speed run's, same settings) are reused when their prompt ids are identical.
    """
    from tqdm import tqdm

    model = qa.generator.current()
    cfg = qa.config
    memo = {prompt_hash(a["prompt_ids"]): a["answer"] for a in known}
    out = {}
    for p in tqdm(prompts, desc=f"agreement {label}", leave=False):
        ids = model.codec.prompt_ids(p["messages"])
        key = prompt_hash(ids)
        text = memo.get(key)
        if text is None:
            if model.backend == "llamacpp":
                model.llama.reset()  # the same fresh context as in the speed run
            pieces = model.stream(
                p["messages"],
                max_new_tokens=cfg.max_new_tokens,
                timeout_s=cfg.generation_timeout_s,
                repetition_penalty=cfg.repetition_penalty,
            )
            text = "".join(pieces).strip()
        tokens = model.codec.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        out[p["key"]] = {"text": text, "tokens": list(tokens), "prompt_hash": key}
    return out


def compare_backends(
    prompts: list[dict[str, Any]], a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """agreement_metrics over the prompt set, overall and per source, plus whether the prompt ids were equal."""
    pairs = [
        {
            "key": p["key"],
            "source": p["source"],
            "question": p["question"],
            "text_a": a[p["key"]]["text"],
            "text_b": b[p["key"]]["text"],
            "tokens_a": a[p["key"]]["tokens"],
            "tokens_b": b[p["key"]]["tokens"],
            "same_prompt": a[p["key"]]["prompt_hash"] == b[p["key"]]["prompt_hash"],
        }
        for p in prompts
        if p["key"] in a and p["key"] in b
    ]
    result = agreement_metrics(pairs)
    result["same_prompt_ids"] = sum(p["same_prompt"] for p in pairs)
    result["by_source"] = {
        source: {
            k: v
            for k, v in agreement_metrics([p for p in pairs if p["source"] == source]).items()
            if k != "examples"
        }
        for source in sorted({p["source"] for p in pairs})
    }
    return result


def agreement_pairs(gguf_type: str) -> list[tuple[str, str]]:
    """(a, b) backend pairs compared: the llamacpp backend and bf16 (the harmless-change yardstick) vs fp32."""
    return [
        (f"llamacpp {gguf_type}", "transformers float32"),
        ("transformers bfloat16", "transformers float32"),
    ]


# ---- retrieval at scale ----------------------------------------------------------------------------
def retrieval_at_scale(
    sizes: list[int], queries: int, embed: dict[str, float] | None
) -> list[dict[str, Any]]:
    """benchmarks/retrieval_latency.py's synthetic corpora, with the index kind the app builds at each size."""
    from benchmarks.retrieval_latency import build, make_corpus, make_queries, measure
    from retrieval.index import DEFAULT_HNSW_THRESHOLD

    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        chunks, vectors, centres, topic_words = make_corpus(n, rng)
        qs = make_queries(queries, centres, topic_words, rng)
        index, build_s = build(chunks, vectors, hnsw=n >= DEFAULT_HNSW_THRESHOLD)
        row = {"chunks": n, "faiss": index.faiss_type, "build_s": round(build_s, 2), **measure(index, qs)}
        if embed:
            row["with_embedding_p50_ms"] = round(row["p50_ms"] + embed["p50_ms"], 2)
            row["with_embedding_p95_ms"] = round(row["p95_ms"] + embed["p95_ms"], 2)
        rows.append(row)
        del index, chunks, vectors
    return rows


# ---- report ----------------------------------------------------------------------------------------
def bound_tokens_per_s(bandwidth_gbps: float, bytes_per_token: int) -> float:
    return bandwidth_gbps * 1e9 / bytes_per_token


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """`vs_raw` and `vs_fp32` decode-speed ratios on every row (None where the reference row is missing).

    `vs_raw` compares with the raw llama.cpp row that samples the same way (same repetition penalty), falling back
    to the pure-engine row (penalty 1.0); `vs_raw_engine` always compares with the pure engine.
    """
    raws = {r.get("repetition_penalty"): r for r in runs if r.get("kind") == "raw"}
    engine = raws.get(1.0) or next(iter(raws.values()), None)
    fp32 = next((r for r in runs if r["backend"] == "transformers float32"), None)
    for r in runs:
        raw = raws.get(r.get("repetition_penalty")) or engine
        r["vs_raw_reference"] = raw and raw["backend"]
        r["vs_raw"] = ratio(r["decode_tokens_per_s"], raw and raw["decode_tokens_per_s"])
        r["vs_raw_engine"] = ratio(r["decode_tokens_per_s"], engine and engine["decode_tokens_per_s"])
        r["vs_fp32"] = ratio(r["decode_tokens_per_s"], fp32 and fp32["decode_tokens_per_s"])
        r["first_token_p50_vs_raw"] = ratio(
            (r["first_token_ms"] or {}).get("p50"), raw and (raw["first_token_ms"] or {}).get("p50")
        )


def penalty_effect(runs: list[dict[str, Any]], gguf_type: str) -> dict[str, Any] | None:
    """The app's llamacpp row with its configured penalty vs the same app with penalty 1.0 (decode speed)."""
    app = next((r for r in runs if r["backend"] == f"llamacpp {gguf_type}"), None)
    plain = next((r for r in runs if r["backend"] == f"llamacpp {gguf_type} (penalty 1.0)"), None)
    if app is None or plain is None:
        return None
    return {
        "penalty": app["repetition_penalty"],
        "decode_ratio": ratio(app["decode_tokens_per_s"], plain["decode_tokens_per_s"]),
        "penalty_off_vs_raw": plain.get("vs_raw"),
    }


def add_bound(run: dict[str, Any], bandwidth: dict[str, float]) -> None:
    per_token = run["bytes_per_token"]["weights_bytes_per_token"]
    run["bound_tokens_per_s"] = round(bound_tokens_per_s(bandwidth["read_gbps_median"], per_token), 1)
    rate = run["decode_tokens_per_s"]
    run["percent_of_bound"] = round(100 * rate / run["bound_tokens_per_s"], 1) if rate else None


COLUMNS = (
    "backend",
    "penalty",
    "retrieve p50/p95 ms",
    "TTFT p50/p95 ms",
    "total p50/p95 ms",
    "request TTFT/total p50 ms",
    "tokens/answer",
    "decode tok/s",
    "vs raw (same sampling)",
    "vs raw engine",
    "vs fp32",
    "bound tok/s",
    "% of bound",
    "MB/token",
)


def table_row(r: dict[str, Any]) -> list[str]:
    """One printed row (COLUMNS) of a speed run; '-' where a value does not apply or is missing."""
    request = "-"
    if r.get("request_first_token_ms") and r.get("request_total_ms"):
        request = f"{r['request_first_token_ms']['p50']:.0f} / {r['request_total_ms']['p50']:.0f}"
    per_token = (r.get("bytes_per_token") or {}).get("weights_bytes_per_token")
    return [
        r["backend"],
        _num(r.get("repetition_penalty"), "{:g}"),
        _pair(r.get("retrieve_ms")),
        _pair(r.get("first_token_ms")),
        _pair(r.get("total_ms")),
        request,
        _num(r.get("mean_answer_tokens"), "{:.1f}"),
        _num(r.get("decode_tokens_per_s"), "{:.1f}"),
        _num(r.get("vs_raw"), "{:.2f}x"),
        _num(r.get("vs_raw_engine"), "{:.2f}x"),
        _num(r.get("vs_fp32"), "{:.2f}x"),
        _num(r.get("bound_tokens_per_s"), "{:.0f}"),
        _num(r.get("percent_of_bound"), "{:.0f}%"),
        _num(per_token and per_token / 1e6, "{:.0f}"),
    ]


def _pair(p: dict[str, float] | None) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f}" if p else "-"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    bw = result["bandwidth"]
    console.print(
        f"memory bandwidth: read {bw['read_gbps_median']} GB/s median ({bw['read_gbps_max']} max), "
        f"copy {bw['copy_gbps_median']} GB/s; load average {result['load_average_start']} -> "
        f"{result['load_average_end']}"
    )
    table = Table(
        title=f"ask latency by backend, {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, k=4, "
        f"max_new_tokens={result['max_new_tokens']} (TTFT/total from the generation call)"
    )
    for i, col in enumerate(COLUMNS):
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=i == 0)
    for r in result["runs"]:
        table.add_row(*table_row(r))
    console.print(table)
    effect = result.get("penalty_effect")
    if effect:
        console.print(
            f"llamacpp decode with repetition_penalty {effect['penalty']} / with 1.0: {effect['decode_ratio']}x "
            f"(penalty 1.0 vs raw: {effect['penalty_off_vs_raw']}x)"
        )
    settings = result.get("llamacpp_settings") or {}
    if "match" in settings:
        console.print(f"llama.cpp settings app vs raw match: {settings['match']} (app {settings['app']})")
    if result.get("agreement"):
        agree = Table(title=f"greedy agreement ({result['agreement']['prompts']} prompts: demo + squad2)")
        for col in (
            "pair",
            "prompts",
            "same prompt ids",
            "exact text",
            f"first {FIRST_N} tokens",
            "token-identical",
            "mean first divergence",
            "demo exact",
            "squad2 exact",
        ):
            agree.add_column(col, justify="right")
        for name, m in result["agreement"]["pairs"].items():
            by = m.get("by_source", {})
            agree.add_row(
                name,
                str(m["prompts"]),
                str(m["same_prompt_ids"]),
                f"{m['exact_text_rate']:.0%}",
                f"{m['first_n_tokens_rate']:.0%}",
                f"{m['token_identical_rate']:.0%}",
                _num(m["mean_first_divergence"], "{:.1f}"),
                _num(by.get("demo", {}).get("exact_text_rate"), "{:.0%}"),
                _num(by.get("squad2", {}).get("exact_text_rate"), "{:.0%}"),
            )
        console.print(agree)
        for name, m in result["agreement"]["pairs"].items():
            a, b = name.split(" vs ")
            for ex in m["examples"]:
                console.print(
                    f"{name} {ex['key']} (first divergence at token {ex['first_divergence']}): "
                    f"{ex['question']}\n  {a}: {ex['a'][:220]!r}\n  {b}: {ex['b'][:220]!r}",
                    markup=False,
                    highlight=False,
                )
    if result["retrieval_at_scale"]:
        scale = Table(title="retrieval at scale (synthetic corpus; search = dense + BM25 + RRF)")
        for col in ("chunks", "index", "search p50 ms", "search p95 ms", "+ query embedding p95 ms"):
            scale.add_column(col, justify="right")
        for r in result["retrieval_at_scale"]:
            scale.add_row(
                str(r["chunks"]),
                r["faiss"],
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r.get('with_embedding_p95_ms', float('nan')):.2f}",
            )
        console.print(scale)


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="how many of the 20 questions")
    parser.add_argument("--repeats", type=int, default=1, help="ask each question this many times")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKEND_CHOICES),
        choices=BACKEND_CHOICES,
        help="rows: transformers (one per --dtypes), llamacpp (the app), raw (llama.cpp outside the app)",
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--decodes", nargs="+", default=None, help="transformers decode paths (default: all)")
    parser.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES, help="GGUF exported for llamacpp")
    parser.add_argument(
        "--penalty-row",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the app's llamacpp backend with repetition_penalty 1.0 (what the penalty costs)",
    )
    parser.add_argument(
        "--agreement-questions",
        type=int,
        default=len(QUESTIONS) + MAX_SQUAD,
        help=f"greedy agreement prompts: the demo questions first, then up to {MAX_SQUAD} squad2 ones (0: skip)",
    )
    parser.add_argument("--squad", type=Path, default=SQUAD, help="squad2-dev-half JSON (agreement prompts)")
    parser.add_argument("--model-dir", type=Path, default=None, help="an already converted default model")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="retrieval at scale")
    parser.add_argument("--scale-queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if "raw" in args.backends and "llamacpp" not in args.backends:
        parser.error(
            "the raw llama.cpp row is fed the app's llamacpp prompts and answer lengths: add llamacpp"
        )
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be between 1 and {len(QUESTIONS)}")
    if not 0 <= args.agreement_questions <= len(QUESTIONS) + MAX_SQUAD:
        parser.error(f"--agreement-questions must be between 0 and {len(QUESTIONS) + MAX_SQUAD}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        return run(args)
    except AskBenchError as e:
        raise SystemExit(f"ask_latency: {e}") from e


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from app.generator import DECODE_PATHS
    from benchmarks.retrieval_latency import query_embedding_latency
    from retrieval.embedder import SentenceTransformerEmbedder

    if "llamacpp" in args.backends:
        from app.backends.llamacpp_lm import INSTALL_HINT, llama_cpp_available

        if not llama_cpp_available():
            raise AskBenchError(f"llama-cpp-python is not installed; {INSTALL_HINT}")
    decodes = args.decodes or list(DECODE_PATHS)
    result: dict[str, Any] = {
        "what": "QAService.stream per backend on the default model, demo corpus, k=4, greedy; raw llama.cpp on "
        "the same GGUF and prompt ids; greedy agreement (see the benchmark's docstring for the rules)",
        "machine": {
            "cpu": cpu()["model"],
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "llama_cpp_python": _version("llama_cpp_python"),
        },
        "load_average_start": load_average(),
        "max_new_tokens": args.max_new_tokens,
        "backends": args.backends,
        "questions": QUESTIONS[: args.questions],
        "repeats": args.repeats,
        "prefix_cache": "reset before every llamacpp/raw question (full prefill each time)",
        "targets": {"llamacpp_vs_raw": 0.95, "llamacpp_vs_fp32": 3.0},
    }
    result["bandwidth"] = memory_bandwidth()
    runs: list[dict[str, Any]] = []
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    prompts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ragqa-ask-bench-") as tmp:
        wants_gguf = "llamacpp" in args.backends
        result["gguf"] = prepare_home(Path(tmp), args.model_dir, args.gguf_type if wants_gguf else None)
        embedder = SentenceTransformerEmbedder()
        if "transformers" in args.backends:
            for dtype in args.dtypes:
                for decode in decodes:
                    row, qa = transformers_phase(dtype, decode, result["questions"], args, embedder)
                    runs.append(row)
                    _progress(row)
                    if args.agreement_questions and decode == decodes[0]:
                        prompts = agreement_prompts(qa, args.agreement_questions, args.squad)
                        answers[row["backend"]] = answer_prompts(qa, prompts, row["_answers"], row["backend"])
                    _release(qa)
        if "llamacpp" in args.backends:
            rows, qa, result["llamacpp_settings"] = llamacpp_phase(result["questions"], args, embedder)
            runs.extend(rows)
            for row in rows:
                _progress(row)
            if args.agreement_questions:
                prompts = agreement_prompts(qa, args.agreement_questions, args.squad)
                label = f"llamacpp {args.gguf_type}"
                answers[label] = answer_prompts(qa, prompts, rows[0]["_answers"], label)
            _release(qa)
    for r in runs:
        add_bound(r, result["bandwidth"])
        r["answers_detail"] = [_answer_record(a) for a in r.pop("_answers", [])]
    add_ratios(runs)
    result["runs"] = runs
    result["penalty_effect"] = penalty_effect(runs, args.gguf_type)
    result["agreement"] = (
        agreement_report(prompts, answers, agreement_pairs(args.gguf_type)) if answers else None
    )
    embed = query_embedding_latency() if args.sizes else None
    result["query_embedding"] = embed
    result["retrieval_at_scale"] = retrieval_at_scale(args.sizes, args.scale_queries, embed)
    result["load_average_end"] = load_average()
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def agreement_report(
    prompts: list[dict[str, Any]],
    answers: dict[str, dict[str, dict[str, Any]]],
    compared: list[tuple[str, str]],
) -> dict[str, Any]:
    """The agreement section of the result: metrics per compared pair and every backend's answer texts."""
    pairs = {
        f"{a} vs {b}": compare_backends(prompts, answers[a], answers[b])
        for a, b in compared
        if a in answers and b in answers
    }
    return {
        "prompts": len(prompts),
        "prompt_set": [{"key": p["key"], "question": p["question"]} for p in prompts],
        "first_n": FIRST_N,
        "pairs": pairs,
        "answers": {name: {k: v["text"] for k, v in by_key.items()} for name, by_key in answers.items()},
    }


def _answer_record(a: dict[str, Any]) -> dict[str, Any]:
    keep = ("question", "first_token_ms", "total_ms", "tokens", "decode_s", "finish_reason", "answer")
    record = {"prompt_hash": prompt_hash(a["prompt_ids"]), **{k: a.get(k) for k in keep}}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}


def _progress(row: dict[str, Any]) -> None:
    ttft = (row["first_token_ms"] or {}).get("p50")
    print(
        f"{row['backend']}: first token p50 {ttft} ms, decode {row['decode_tokens_per_s']} tok/s", flush=True
    )


def _release(qa: Any) -> None:
    """Free the service's model (llama.cpp's native memory, torch weights) before the next backend loads."""
    qa.generator.current().close()
    gc.collect()


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
