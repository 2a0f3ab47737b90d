"""Which GGUF type to serve on this CPU: prefill (time to first token), decode, greedy agreement with transformers
fp32 and answer quality, per type (f16, bf16, q8_0 from the converter; q4_0, q4_k_m, q5_k_m made from the f16 file
by llama.cpp's own quantizer), with the llama.cpp build the app would use.

The evidence behind `gguf: auto` (model_store/gguf.py): bf16 where the CPU has native bf16 dot products and
llama.cpp was built with them, f16 elsewhere. Everything on the default model (the registry's v0001 folder, or
`--model`), 2 threads by default, the app's llama.cpp context settings (`llama_options`):
  - speed: `--prompts` 4-passage prompts of squad2-dev-half paragraphs, each on a fresh context: prefill time
    (TTFT; p50 over all but the first) and greedy decode tok/s over 32 tokens;
  - batched steps: the cost of one decode step of 1, 2, 4 parallel sequences over one such prompt (the app's
    unified-KV context, as the k alternatives are sampled), median ms; `k4_step_over_single` bounds what sampling
    4 alternatives together can cost against one answer of the same length (issue #15 asks <= 1.5x);
  - agreement: the same kind of prompts, greedy, `--new-tokens`, token ids identical to transformers fp32;
  - quality: `--quality` answerable squad2-dev-half questions (training side: never a held-out set), the gold
    paragraph + 3 random others, greedy, token F1 against the gold answers, and the paired difference of each
    type against f16 with a bootstrap 95% CI.
Prints a table, writes docs/results/serving/gguf_types.json (CPU model and flags, llama.cpp's instruction sets,
the load average before each part). Never asserts.

    .venv/bin/python benchmarks/gguf_types.py --model var/models/v0001
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"  # benchmarks may read ../shared
OUT = ROOT / "docs" / "results" / "serving" / "gguf_types.json"
TYPES = ("f16", "bf16", "q8_0")
# The converter writes f16/bf16/q8_0 only; these come from llama.cpp's quantizer (llama_model_quantize) on the f16
# file. On AVX2 llama.cpp repacks q4_0 into interleaved blocks with their own matrix kernels ("REPACK" in its
# build), the prefill path issue #15 asks about. K-quants need rows of 256: this model's 576-wide rows fall back
# to llama.cpp's choice for those tensors (recorded as the file's size).
QUANTIZED = ("q4_0", "q4_k_m", "q5_k_m")
CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")


def paragraphs(squad: Path) -> list[tuple[str, dict[str, Any]]]:
    """(article title, paragraph) of every paragraph of a squad-format file."""
    return [(a["title"], p) for a in json.loads(squad.read_text())["data"] for p in a["paragraphs"]]


def with_three_others(
    rng: random.Random, title: str, own: dict[str, Any], pool: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, str]]:
    """The app's passages: `own` first, then 3 paragraphs drawn from `pool`."""
    return [{"text": p["context"], "source": f"{t}.md"} for t, p in [(title, own), *rng.sample(pool, 3)]]


def four_passage_prompts(squad: Path, tokenizer: Any, n: int, seed: int) -> list[list[int]]:
    """n chat-templated prompts: a question and 4 paragraphs (its own first), as the app renders them."""
    pool = paragraphs(squad)
    rng = random.Random(seed)
    return [
        encode(tokenizer, own["qas"][0]["question"], with_three_others(rng, title, own, pool))
        for title, own in rng.sample(pool, n)
    ]


def quality_items(squad: Path, tokenizer: Any, n: int, seed: int) -> list[tuple[list[int], list[str]]]:
    """(prompt ids, gold answers) of n answerable questions: the gold paragraph first, then 3 random others."""
    pool = paragraphs(squad)
    rng = random.Random(seed)
    answerable = [(t, p, q) for t, p in pool for q in p["qas"] if q["answers"]]
    return [
        (
            encode(tokenizer, qa["question"], with_three_others(rng, title, own, pool)),
            [a["text"] for a in qa["answers"]],
        )
        for title, own, qa in rng.sample(answerable, n)
    ]


def encode(tokenizer: Any, question: str, passages: list[dict[str, str]]) -> list[int]:
    from retrieval.prompt import render_prompt

    messages = render_prompt(question, passages)
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def greedy(llm: Any, prompt: list[int], new_tokens: int, eos: set[int]) -> tuple[list[int], float, float]:
    """(token ids, prefill seconds, decode seconds) of a greedy answer on a fresh context."""
    import llama_cpp
    import numpy as np

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - t0
    ids: list[int] = []
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        token = int(logits.argmax())
        if token in eos:
            break
        ids.append(token)
        llm.eval([token])
    return ids, prefill, time.perf_counter() - t1


def batched_step_ms(llm: Any, prompt: list[int], sizes: list[int], steps: int = 20) -> dict[str, float]:
    """Median ms of one decode step of n parallel sequences sharing `prompt`'s KV cells, per n in `sizes`: the app's
    own context (`_allow_parallel_sequences`) and step (`decode_rows`), timed alone: n rows of n sequences whose
    answers differ, the worst case of `ParallelSampler` (candidates that agree so far share a row there)."""
    import llama_cpp
    from llama_cpp._internals import LlamaBatch

    from app.backends.llamacpp_lm import _allow_parallel_sequences, decode_rows

    _allow_parallel_sequences(llm, max(sizes))
    llm.reset()
    llm.eval(prompt)
    memory = llama_cpp.llama_get_memory(llm.ctx)
    for seq in range(1, max(sizes)):
        llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
    batch = LlamaBatch(n_tokens=max(sizes), embd=0, n_seq_max=1, verbose=False)
    out = {}
    try:
        for n in sizes:
            times = []
            for step in range(steps + 2):  # two warm-up steps
                rows = [(seq, 500 + step, len(prompt) + step) for seq in range(n)]
                t0 = time.perf_counter()
                decode_rows(llm, batch, rows)
                times.append(time.perf_counter() - t0)
            for seq in range(max(sizes)):  # back to the bare prompt for the next size
                llama_cpp.llama_memory_seq_rm(memory, seq, len(prompt), -1)
            out[str(n)] = round(statistics.median(times[2:]) * 1000, 2)
    finally:
        batch.close()
    return out


def fp32_answers(
    model_dir: Path, prompts: list[list[int]], new_tokens: int, eos: set[int]
) -> list[list[int]]:
    """transformers fp32 greedy answers (EOS cut), the reference the types are compared with."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False)[0]
            answer = []
            for token in ids[len(prompt) :].tolist():
                if token in eos:
                    break
                answer.append(token)
            out.append(answer)
    return out


def measure_type(
    gguf: Path,
    threads: int,
    speed: list[list[int]],
    reference: list[tuple[list[int], list[int]]],
    quality: list,
    tokenizer: Any,
    eos: set[int],
    new_tokens: int,
    batch_sizes: list[int] = (),
) -> dict[str, Any]:
    import llama_cpp

    from app.backends.llamacpp_lm import llama_options
    from evaluation.metrics import squad_f1

    llm = llama_cpp.Llama(model_path=str(gguf), **llama_options(threads, 2048))
    try:
        load = os.getloadavg()[0]
        ttft, rates = [], []
        for prompt in speed:
            ids, prefill, decode = greedy(llm, prompt, 32, set())
            ttft.append(prefill)
            rates.append(len(ids) / decode)
        same = first8 = 0
        for prompt, expected in reference:
            ids, _, _ = greedy(llm, prompt, new_tokens, eos)
            same += ids == expected
            first8 += ids[:8] == expected[:8]
        f1 = []
        for prompt, golds in quality:
            ids, _, _ = greedy(llm, prompt, new_tokens, eos)
            f1.append(squad_f1(CITATION.sub("", tokenizer.decode(ids)), golds))
        steps = batched_step_ms(llm, speed[0], batch_sizes) if batch_sizes else {}
    finally:
        llm.close()
    return {
        "step_ms_by_parallel_sequences": steps,
        "k4_step_over_single": round(steps["4"] / steps["1"], 2) if {"1", "4"} <= steps.keys() else None,
        "load_before": load,
        "ttft_p50_s": round(statistics.median(ttft[1:] or ttft), 3),
        "ttft_s": [round(x, 3) for x in ttft],
        "decode_tokens_per_s": round(statistics.median(rates), 1),
        "identical_to_fp32": same,
        "first8_identical": first8,
        "agreement_prompts": len(reference),
        "f1": statistics.mean(f1) if f1 else None,
        "f1_per_question": f1,
        "bytes": gguf.stat().st_size,
    }


def quantize_from_f16(folder: Path, outtype: str, threads: int) -> Path:
    """`folder/model.<outtype>.gguf` made by llama.cpp's quantizer from the folder's f16 GGUF."""
    import ctypes

    import llama_cpp

    from model_store.gguf import export_gguf, gguf_name

    f16 = folder / gguf_name("f16")
    if not f16.is_file():
        export_gguf(folder, "f16")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{outtype.upper()}")
    params.nthread = threads
    out = folder / f"model.{outtype}.gguf"
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama.cpp could not quantize {f16} to {outtype}")
    return out


def make_gguf(folder: Path, outtype: str, threads: int) -> Path:
    """The type's file: the app's converter for its own types, llama.cpp's quantizer for QUANTIZED."""
    from model_store.gguf import export_gguf

    if outtype in QUANTIZED:
        return quantize_from_f16(folder, outtype, threads)
    return folder / export_gguf(folder, outtype)["file"]


def llama_build() -> list[str]:
    import llama_cpp

    from app.doctor import instruction_sets

    return instruction_sets(llama_cpp.llama_print_system_info().decode("utf-8", "replace"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "var" / "models" / "v0001", help="an HF model folder")
    p.add_argument("--squad", type=Path, default=SQUAD)
    p.add_argument("--types", default=",".join(TYPES), help=f"any of {', '.join(TYPES + QUANTIZED)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8, help="speed prompts")
    p.add_argument("--agreement", type=int, default=30, help="agreement prompts")
    p.add_argument("--quality", type=int, default=150, help="squad2-dev-half questions scored")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument(
        "--batch-steps", default="1,2,4", help="parallel sequences per decode step to time ('' = none)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from benchmarks.loop import machine_record
    from benchmarks.train_throughput import model_matmul_rates
    from evaluation.metrics import paired_bootstrap_ci
    from model_store.gguf import auto_outtype

    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no model at {args.model}: run `ragqa setup` or pass --model DIR")
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    speed = four_passage_prompts(args.squad, tokenizer, args.prompts, args.seed)
    agree = four_passage_prompts(args.squad, tokenizer, args.agreement, args.seed + 1)
    quality = quality_items(args.squad, tokenizer, args.quality, args.seed + 2)
    reference = list(zip(agree, fp32_answers(args.model, agree, args.new_tokens, eos), strict=True))
    result: dict[str, Any] = {
        "machine": machine_record(),
        "llama_cpp_build": llama_build(),
        "gguf_auto_here": auto_outtype(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "speed_prompt_tokens": [len(p) for p in speed],
        # this CPU's compute bound for context: prefill is ~2 x non-embedding parameters FLOP per prompt token
        "matmul_gflops": {k: round(v, 1) for k, v in model_matmul_rates(args.model).items()},
        "types": {},
    }
    with tempfile.TemporaryDirectory(prefix="gguf-types-") as tmp:
        folder = Path(tmp)
        for f in args.model.iterdir():  # the converter reads the HF folder; GGUFs are written beside a copy
            if f.is_file() and not f.name.endswith(".gguf"):
                shutil.copy2(f, folder / f.name)
        for outtype in [t.strip() for t in args.types.split(",") if t.strip()]:
            row = measure_type(
                make_gguf(folder, outtype, args.threads),
                args.threads,
                speed,
                reference,
                quality,
                tokenizer,
                eos,
                args.new_tokens,
                [int(n) for n in args.batch_steps.split(",") if n.strip()],
            )
            result["types"][outtype] = row
            print(
                f"{outtype}: TTFT p50 {row['ttft_p50_s']} s, decode {row['decode_tokens_per_s']} tok/s, "
                f"identical {row['identical_to_fp32']}/{row['agreement_prompts']}, F1 {row['f1']}, "
                f"decode step ms by parallel sequences {row['step_ms_by_parallel_sequences']}",
                flush=True,
            )
    base = result["types"].get("f16")
    for outtype, row in result["types"].items():
        if base and outtype != "f16":
            row["f1_minus_f16"] = paired_bootstrap_ci(row["f1_per_question"], base["f1_per_question"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
