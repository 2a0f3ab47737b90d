"""Prompt-lookup drafts for the llama.cpp backend's greedy answers (app.backends.prompt_lookup): same answers, how
much faster, and how far to guess.

On a RAGQA_HOME with a published version that has a GGUF and an ingested corpus (`ragqa setup` makes one;
default ./var), the served model answers, greedy, the app's penalty, each prompt from a fresh context:
- prompts: the bundled guide's questions as the app prompts them (retrieval, k 4, the prompt limit), and
  `--squad-questions` squad2-dev-half questions of the TRAINING articles (evaluation.splits; never the held-out
  articles, never xquad-en) on their own paragraph;
- `timed`: per prompt the answer with the drafts off (one decode step per token) and on, alternating; identical
  token ids required and counted; decode time from the first token to the end; decode steps per token;
- `step_ms_by_rows`: one decode call of 1, 2, 3, 5, 9, 17 rows of sequence 0 after the first guide prompt (median of
  7), the cost curve of a step by its size on this CPU;
- `replay`: every draft policy in POLICIES replayed over the plain greedy answers (a guess is kept while it equals
  the answer's next token) against that curve: decode milliseconds of plain / with the policy. The shipped one is
  DRAFT_BY_MATCH. `replay_other_cpu` replays the same answers against the AVX2-only EPYC's f16 step costs of 1, 2
  and 4 parallel sequences (docs/results/serving/gguf_types_avx2_batch_steps.json; extended linearly beyond 4 rows):
  an estimate for a CPU whose batched steps cost more, not a measurement there.

The 1-minute load average is waited on (< --idle-load) before the run and recorded before and after; the CPU
model and flags are recorded. Nothing is asserted. JSON: docs/results/serving/prompt_lookup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average, wait_for_idle  # noqa: E402

RESULTS = ROOT / "docs" / "results" / "serving" / "prompt_lookup.json"
AVX2_STEPS = ROOT / "docs" / "results" / "serving" / "gguf_types_avx2_batch_steps.json"
SQUAD = ROOT.parent / "shared" / "data" / "squad2-dev-half" / "dev-v2.0.json"
ROWS = (1, 2, 3, 5, 9, 17)
# name -> {n-gram length: tokens guessed after a match of that length}
POLICIES: dict[str, dict[int, int]] = {
    "2-gram: 1": {2: 1},
    "3/2-gram: 2": {3: 2, 2: 2},
    "3/2-gram: 4": {3: 4, 2: 4},
    "3/2-gram: 8": {3: 8, 2: 8},
    "3-gram: 3": {3: 3},
    "3-gram: 3, 2-gram: 1": {3: 3, 2: 1},
    "4-gram: 4, 3-gram: 2, 2-gram: 1": {4: 4, 3: 2, 2: 1},
}


def replay(policy: dict[int, int], prompt: list[int], answer: list[int], eos: int) -> list[int]:
    """Rows of each decode step greedy decoding with `policy`'s drafts takes to produce `answer` then EOS."""
    from app.backends.prompt_lookup import DraftIndex

    truth = [*answer, eos]
    index, made, rows = DraftIndex([*prompt, truth[0]], by_match=policy), 1, []
    while made < len(truth):
        guess = index.draft(1 << 30)  # only the policy bounds a guess, as in the backend minus its budget
        kept = 0
        while kept < len(guess) and made + kept < len(truth) and guess[kept] == truth[made + kept]:
            kept += 1
        rows.append(1 + len(guess))
        for token in truth[made : made + kept + 1]:
            index.append(token)
        made += kept + 1
    return rows


def step_cost(curve: dict[int, float]) -> Any:
    """Milliseconds of a step of n rows, linear between the measured sizes (and beyond the last two)."""
    sizes = sorted(curve)

    def cost(n: int) -> float:
        for a, b in zip(sizes, sizes[1:], strict=False):
            if a <= n <= b:
                return curve[a] + (curve[b] - curve[a]) * (n - a) / (b - a)
        a, b = sizes[-2], sizes[-1]
        return curve[b] + (curve[b] - curve[a]) * (n - b) / (b - a)

    return cost


def replay_table(answers: list[dict[str, Any]], curve: dict[int, float], eos: int) -> dict[str, Any]:
    cost = step_cost(curve)
    plain = sum(len(a["answer"]) * cost(1) for a in answers)
    out = {}
    for name, policy in POLICIES.items():
        rows = [r for a in answers for r in replay(policy, a["prompt"], a["answer"], eos)]
        out[name] = {
            "speedup": round(plain / sum(cost(r) for r in rows), 3),
            "steps_per_token": round(len(rows) / max(1, sum(len(a["answer"]) for a in answers)), 3),
        }
    return out


def prompts(qa: Any, squad_path: Path, n_squad: int) -> list[dict[str, Any]]:
    from benchmarks.ask_latency import QUESTIONS, pick_squad_questions
    from evaluation.splits import HELDOUT_ARTICLES, SPLIT_SEED, split_articles, subset_squad
    from retrieval.prompt import render_prompt

    model = qa.generator.current()
    out = []
    for q in QUESTIONS:
        messages, _ = qa.build_prompt(model, q, qa.retrieve(q), [])
        out.append({"source": "guide", "messages": messages})
    squad = json.loads(squad_path.read_text(encoding="utf-8"))
    train, _ = split_articles(squad, HELDOUT_ARTICLES, SPLIT_SEED)
    for item in pick_squad_questions(subset_squad(squad, train), n_squad):
        passage = {"text": item["context"], "source": f"squad2/{item['title']}"}
        out.append({"source": "squad2-train", "messages": render_prompt(item["question"], [passage])})
    return out


def greedy(model: Any, ids: list[int], max_new_tokens: int, lookup: bool) -> dict[str, Any]:
    from app.backends.base import Decoding, GenerationStats

    model.prompt_lookup = lookup
    model.llama.reset()
    stats = GenerationStats()
    calls = [0]
    decode = model.llama._ctx.decode

    def counting(batch: Any) -> None:
        calls[0] += 1
        decode(batch)

    model.llama._ctx.decode = counting
    try:
        with model._lock:
            tokens = list(model._tokens(ids, Decoding(max_new_tokens=max_new_tokens), stats))
    finally:
        del model.llama._ctx.decode
    first = stats.first_token
    prefill_calls = -(-len(ids) // model.llama.n_batch)  # llama.cpp takes the prompt n_batch tokens at a time
    return {
        "tokens": tokens,
        "decode_s": (stats.ended - first) if first is not None and stats.ended else 0.0,
        "steps": calls[0] - prefill_calls,
    }


def step_ms_by_rows(model: Any, ids: list[int]) -> dict[int, float]:
    from llama_cpp._internals import LlamaBatch

    from app.backends.llamacpp_lm import decode_rows, prefill

    llama = model.llama
    llama.reset()
    prefill(llama, ids)
    batch = LlamaBatch(n_tokens=max(ROWS), embd=0, n_seq_max=1, verbose=False)
    times: dict[int, list[float]] = {n: [] for n in ROWS}
    try:
        for _ in range(8):
            for n in ROWS:
                rows = [(0, ids[j % len(ids)], len(ids) + j) for j in range(n)]
                t0 = time.perf_counter()
                decode_rows(llama, batch, rows)
                times[n].append((time.perf_counter() - t0) * 1000)
                llama._ctx.kv_cache_seq_rm(-1, len(ids), -1)
    finally:
        batch.close()
        llama.reset()
    return {n: round(statistics.median(v[1:]), 2) for n, v in times.items()}  # the first round warms up


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["RAGQA_HOME"] = str(args.home)
    from benchmarks.ask_latency import open_service

    wait = wait_for_idle(args.idle_load, args.idle_timeout)
    qa = open_service("llamacpp", "auto", "auto", args.max_new_tokens, None)
    model = qa.generator.current()
    eos = model.llama.token_eos()
    timed = []
    from tqdm import tqdm

    for p in tqdm(prompts(qa, args.squad, args.squad_questions), desc="prompts"):
        ids = model.codec.prompt_ids(p["messages"])
        plain = greedy(model, ids, args.max_new_tokens, lookup=False)
        fast = greedy(model, ids, args.max_new_tokens, lookup=True)
        timed.append(
            {
                "source": p["source"],
                "prompt": ids,
                "answer": plain["tokens"],
                "same": fast["tokens"] == plain["tokens"],
                "plain_decode_s": plain["decode_s"],
                "lookup_decode_s": fast["decode_s"],
                "plain_steps": plain["steps"],
                "lookup_steps": fast["steps"],
            }
        )
    model.prompt_lookup = True
    curve = step_ms_by_rows(model, timed[0]["prompt"])
    return {
        "what": "prompt-lookup drafts, llama.cpp greedy: see benchmarks/prompt_lookup.py's docstring",
        "machine": {**cpu(), "cpus": os.cpu_count()},
        "model": model.describe(),
        "settings": {
            "home": str(args.home),
            "max_new_tokens": args.max_new_tokens,
            "squad_questions": args.squad_questions,
            "repetition_penalty": qa.config.repetition_penalty,
        },
        "wait": wait,
        "load_after": load_average(),
        "step_ms_by_rows": curve,
        "summary": summarise(timed, curve, eos),
        "replay_other_cpu": other_cpu_replay(timed, eos),
        "by_source": {
            src: summarise([t for t in timed if t["source"] == src], curve, eos)
            for src in sorted({t["source"] for t in timed})
        },
    }


def summarise(timed: list[dict[str, Any]], curve: dict[int, float], eos: int) -> dict[str, Any]:
    from app.backends.prompt_lookup import DRAFT_BY_MATCH

    tokens = sum(len(t["answer"]) for t in timed)
    plain_s = sum(t["plain_decode_s"] for t in timed)
    lookup_s = sum(t["lookup_decode_s"] for t in timed)
    return {
        "prompts": len(timed),
        "answer_tokens": tokens,
        "identical_answers": sum(t["same"] for t in timed),
        "decode_s_plain": round(plain_s, 3),
        "decode_s_lookup": round(lookup_s, 3),
        "decode_speedup": round(plain_s / lookup_s, 3) if lookup_s else None,
        "steps_per_token_plain": round(sum(t["plain_steps"] for t in timed) / max(1, tokens), 3),
        "steps_per_token_lookup": round(sum(t["lookup_steps"] for t in timed) / max(1, tokens), 3),
        "shipped_policy": {str(k): v for k, v in DRAFT_BY_MATCH.items()},
        "replay": replay_table(timed, curve, eos),
    }


def other_cpu_replay(timed: list[dict[str, Any]], eos: int) -> dict[str, Any] | None:
    try:
        record = json.loads(AVX2_STEPS.read_text(encoding="utf-8"))
        curve = {int(n): ms for n, ms in record["types"]["f16"]["step_ms_by_parallel_sequences"].items()}
    except (OSError, ValueError, KeyError):
        return None
    return {
        "source": f"{AVX2_STEPS.relative_to(ROOT)}: f16, step ms by parallel sequences",
        "cpu": record.get("machine"),
        "step_ms_by_rows": curve,
        "replay": replay_table(timed, curve, eos),
    }


def print_report(result: dict[str, Any]) -> None:
    s = result["summary"]
    print(f"\n{result['model']} on {result['machine']['model']}; load {result['wait']['load_before']}")
    print(f"step ms by rows: {result['step_ms_by_rows']}")
    print(f"{'prompts':<24}{'identical':>10}{'plain s':>10}{'lookup s':>10}{'speedup':>9}{'steps/token':>13}")
    for name, row in [("all", s), *result["by_source"].items()]:
        print(
            f"{name:<24}{row['identical_answers']:>6}/{row['prompts']:<3}{row['decode_s_plain']:>10.3f}"
            f"{row['decode_s_lookup']:>10.3f}{row['decode_speedup'] or 0:>9.2f}{row['steps_per_token_lookup']:>13.3f}"
        )
    other = (result.get("replay_other_cpu") or {}).get("replay") or {}
    print(f"\n{'replayed policy':<36}{'speedup':>9}{'steps/token':>13}{'AVX2 f16 est.':>15}")
    for name, row in s["replay"].items():
        est = other.get(name, {}).get("speedup")
        print(f"{name:<36}{row['speedup']:>9.2f}{row['steps_per_token']:>13.3f}{est or 0:>15.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=ROOT / "var", help="a RAGQA_HOME `ragqa setup` made")
    parser.add_argument("--squad", type=Path, default=SQUAD, help="squad2-dev-half JSON")
    parser.add_argument("--squad-questions", type=int, default=80)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--idle-load", type=float, default=0.5)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print_report(result)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
