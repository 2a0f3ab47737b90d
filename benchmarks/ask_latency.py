"""Ask latency of the app on the default model on CPU: retrieval, time to first token, total, decode speed.

Runs in a temporary RAGQA_HOME: the offline default model (SmolLM2-135M, converted from the GGUF, ~20 s, or
hard-linked from `--model-dir`) and the bundled demo corpus ingested with the real embedder. For each dtype (fp32,
bf16) and decode path (app.generator.DECODE_PATHS) it asks ~20 questions about the demo
corpus through `QAService.stream` (k=4 passages, greedy, fixed max_new_tokens) and reports p50/p95 of:

- retrieval (query embedding + dense + BM25 + fusion), time to first token and total answer time, as
  `QAService` measures them (`AskResult.timings_ms`, from the start of the request);
- decode tokens/s: generated tokens after the first / time from first piece to the end, summed over answers
  (tokens are counted by re-tokenising the answer, as `QAService` does).

Beside decode speed it prints the memory-bandwidth bound: the machine's read bandwidth (a torch sum over a 1 GiB
buffer, measured in the same run) divided by the bytes one decode step reads: every Linear weight of the decoder
plus the lm_head (tied to the embedding, so the embedding matrix is counted once, as lm_head), the norms and ONE
embedding row. The KV-cache read (grows with the context) is reported separately and left out of the bound.

Retrieval at 10k and 100k chunks reuses benchmarks/retrieval_latency.py (synthetic clustered corpus, the index
kind the app builds at that size) plus the real query-embedding time.

Timings are never asserted. Prints a rich table and writes benchmarks/results/ask_latency.json.

    python benchmarks/ask_latency.py [--questions 20] [--max-new-tokens 64] [--dtypes float32 bfloat16]
        [--decodes generate static] [--model-dir PATH] [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "ask_latency.json"
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "app" / "demo_corpus"

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


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- model -----------------------------------------------------------------------------------------
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


def prepare_home(home: Path, model_dir: Path | None) -> None:
    """Registry with the default model as v0001 and the demo corpus ingested, under `home`."""
    from app.config import AppConfig
    from retrieval.embedder import SentenceTransformerEmbedder
    from retrieval.ingest import ingest
    from training.modeling import ensure_base_model
    from training.registry import ModelRegistry

    os.environ["RAGQA_HOME"] = str(home)
    paths = AppConfig.load().paths
    if model_dir is not None:
        models = paths.models_dir
        models.mkdir(parents=True)
        shutil.copytree(model_dir, models / "v0001", copy_function=_link_or_copy)
        os.symlink("v0001", models / "current")
    else:
        ensure_base_model(ModelRegistry(paths.models_dir))
    ingest(DEMO_CORPUS, paths.index_dir, SentenceTransformerEmbedder(), progress=False)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---- asking ----------------------------------------------------------------------------------------
def ask_run(
    dtype: str, decode: str, questions: list[str], max_new_tokens: int, repeats: int, embedder: Any
) -> dict[str, Any]:
    """Ask every question `repeats` times through QAService.stream; percentiles of the app's own timings."""
    from app.config import AppConfig
    from app.qa import QAService

    qa = QAService(AppConfig.load(dtype=dtype, max_new_tokens=max_new_tokens, k=4), embedder=embedder)
    t0 = time.perf_counter()
    qa.warm_up()
    model = qa.generator.current()
    model.decode = decode
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in WARM_UP:  # first calls pay one-off costs (oneDNN kernels, torch.compile)
        _ask_once(qa, q)
    warm_s = time.perf_counter() - t0
    rows = [_ask_once(qa, q) for _ in range(repeats) for q in questions]
    tokens = sum(r["tokens"] - 1 for r in rows if r["tokens"] > 1)
    decode_s = sum(r["decode_s"] for r in rows if r["tokens"] > 1)
    return {
        "dtype": dtype,
        "decode": decode,
        "model_load_s": round(load_s, 2),
        "warm_up_s": round(warm_s, 2),
        "answers": len(rows),
        "mean_prompt_tokens": round(statistics.mean(r["prompt_tokens"] for r in rows), 1),
        "mean_answer_tokens": round(statistics.mean(r["tokens"] for r in rows), 1),
        "retrieve_ms": _percentiles([r["retrieve"] for r in rows]),
        "first_token_ms": _percentiles([r["first_token"] for r in rows]),
        "total_ms": _percentiles([r["total"] for r in rows]),
        "decode_tokens_per_s": round(tokens / decode_s, 2) if decode_s else None,
        "bytes_per_token": bytes_read_per_token(model.model),
        "load_during": load_average(),
        "sample_answers": [r["answer"] for r in rows[:3]],
    }


def _ask_once(qa: Any, question: str) -> dict[str, Any]:
    result = None
    first_piece: float | None = None
    for kind, value in qa.stream(question):
        if kind == "token" and first_piece is None:
            first_piece = time.perf_counter()
        elif kind == "done":
            result = value
    end = time.perf_counter()
    assert result is not None
    model = qa.generator.current()
    messages, _ = qa.build_prompt(model, question, result.passages, [])
    n = len(model.tokenizer(result.answer, add_special_tokens=False)["input_ids"]) if result.answer else 0
    return {
        **result.timings_ms,
        "tokens": n,
        "prompt_tokens": model.count_tokens(messages),
        "decode_s": end - (first_piece or end),
        "answer": result.answer,
    }


def _percentiles(xs: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(xs, 50)), 1), "p95": round(float(np.percentile(xs, 95)), 1)}


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


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    bw = result["bandwidth"]
    console.print(
        f"memory bandwidth: read {bw['read_gbps_median']} GB/s median ({bw['read_gbps_max']} max), "
        f"copy {bw['copy_gbps_median']} GB/s; load average {result['load_average_start']} -> "
        f"{result['load_average_end']}"
    )
    table = Table(
        title=f"ask latency, {result['machine']['cpu']}, k=4, max_new_tokens={result['max_new_tokens']}"
    )
    for col in ("dtype", "decode", "retrieve p50/p95 ms", "first token p50/p95 ms", "total p50/p95 ms"):
        table.add_column(col)
    for col in ("decode tok/s", "bound tok/s", "% of bound", "MB/token"):
        table.add_column(col, justify="right")
    for r in result["runs"]:
        table.add_row(
            r["dtype"],
            r["decode"],
            _pair(r["retrieve_ms"]),
            _pair(r["first_token_ms"]),
            _pair(r["total_ms"]),
            f"{r['decode_tokens_per_s']}",
            f"{r['bound_tokens_per_s']:.1f}",
            f"{r['percent_of_bound']:.0f}%" if r["percent_of_bound"] is not None else "-",
            f"{r['bytes_per_token']['weights_bytes_per_token'] / 1e6:.0f}",
        )
    console.print(table)
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


def _pair(p: dict[str, float]) -> str:
    return f"{p['p50']:.0f} / {p['p95']:.0f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="how many of the 20 questions")
    parser.add_argument("--repeats", type=int, default=1, help="ask each question this many times")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--decodes", nargs="+", default=None, help="decode paths (default: all the app has)")
    parser.add_argument("--model-dir", type=Path, default=None, help="an already converted default model")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="retrieval at scale")
    parser.add_argument("--scale-queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from app.generator import DECODE_PATHS
    from benchmarks.retrieval_latency import query_embedding_latency
    from retrieval.embedder import SentenceTransformerEmbedder

    decodes = args.decodes or list(DECODE_PATHS)
    result: dict[str, Any] = {
        "what": "QAService.stream on the default model, demo corpus, k=4, greedy; timings from AskResult",
        "machine": {
            "cpu": _cpu_name(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "load_average_start": load_average(),
        "max_new_tokens": args.max_new_tokens,
        "questions": QUESTIONS[: args.questions],
        "repeats": args.repeats,
    }
    result["bandwidth"] = memory_bandwidth()
    with tempfile.TemporaryDirectory(prefix="ragqa-ask-bench-") as tmp:
        prepare_home(Path(tmp), args.model_dir)
        embedder = SentenceTransformerEmbedder()
        runs = []
        for dtype in args.dtypes:
            for decode in decodes:
                run = ask_run(dtype, decode, result["questions"], args.max_new_tokens, args.repeats, embedder)
                _add_bound(run, result["bandwidth"])
                runs.append(run)
                print(
                    f"{dtype} {decode}: first token p50 {run['first_token_ms']['p50']} ms, "
                    f"decode {run['decode_tokens_per_s']} tok/s ({run['percent_of_bound']}% of bound)",
                    flush=True,
                )
        result["runs"] = runs
    embed = query_embedding_latency() if args.sizes else None
    result["query_embedding"] = embed
    result["retrieval_at_scale"] = retrieval_at_scale(args.sizes, args.scale_queries, embed)
    result["load_average_end"] = load_average()
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


def _add_bound(run: dict[str, Any], bandwidth: dict[str, float]) -> None:
    per_token = run["bytes_per_token"]["weights_bytes_per_token"]
    run["bound_tokens_per_s"] = round(bound_tokens_per_s(bandwidth["read_gbps_median"], per_token), 1)
    rate = run["decode_tokens_per_s"]
    run["percent_of_bound"] = round(100 * rate / run["bound_tokens_per_s"], 1) if rate else None


if __name__ == "__main__":
    main()
