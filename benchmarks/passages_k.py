"""How many passages (and how much of them) the prompt needs: answer quality against time to first token.

Issue #15 asks for a first token under 1 s on a 2-core CPU without AVX-512, and for fewer prompt tokens only where
they do not help answers. On such a CPU llama.cpp's prefill is compute-bound (docs/results/serving/), so the first
token's time is the prompt's length; this measures what each k costs in answers and buys in time.

For each variant `k:limit` (default 4:off = the 4 passages whole, 4:448 = trimmed to their question-relevant
sentences above a 448-token prompt (retrieval/passage_trim.py; `max_prompt_tokens`), 2:off = the 2 best passages
whole): `ragqa eval` of the current (or `--model`) version on the 4
held-out articles of squad2-dev-half (evaluation/splits.py; answerable and unanswerable; squad2-dev-half is the
set this project may tune on, never xquad-en), a seeded subset, retrieval over the set's own contexts, batched
greedy (benchmarks/starter_heldout.py's `run_eval`, resumable). Then the prompts those answers were made from
(the eval's journal keeps each question's passages) are rendered as the app renders them, and their prefill is
timed on the version's GGUF with the app's llama.cpp settings (fresh context each, `--ttft-prompts` of them, p50
over all but the first). Reported per variant: F1 with its bootstrap CI, EM, abstention, retrieval recall@k,
mean prompt tokens, TTFT p50; and F1 - F1 of the first variant, paired over the same questions. Writes
docs/results/serving/passages_k.json (or --out) with the CPU model, flags and load averages. Never asserts.
Each variant evaluates into its own folder under --work and resumes there: after a change to the trimming, move
the trimmed variants' folders away, or the rerun reuses their answers.

    python benchmarks/passages_k.py --home var        # a home after `ragqa setup`
    python benchmarks/passages_k.py --home var --variants 4:off,4:448,2:off --out docs/results/serving/passages_trim.json
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from retrieval.passage_trim import TRIM_ALGORITHM  # noqa: E402  (pure Python: no heavy imports)

DATA = ROOT.parent / "shared" / "data"  # benchmarks may read ../shared; the product never does
OUT = ROOT / "docs" / "results" / "serving" / "passages_k.json"
ANSWER_KEYS = (
    "em",
    "f1_answerable",
    "abstention_rate",
    "abstention_precision",
    "abstention_recall",
    "mean_answer_words",
)


def parse_variants(text: str) -> list[tuple[int, str]]:
    """ "4:off,4:448,2:off" -> [(4, "off"), (4, "448"), (2, "off")]; a bare "3" means 3:off."""
    variants = []
    for item in text.split(","):
        k, _, limit = item.strip().partition(":")
        variants.append((int(k), limit or "off"))
    return variants


def variant_name(k: int, limit: str) -> str:
    return f"k{k}" if limit == "off" else f"k{k}-p{limit}"


def eval_folder(work: Path, version: str, k: int, limit: str = "off") -> Path:
    return work / f"squad2-{version}-{variant_name(k, limit)}"


def journal_prompts(folder: Path, tokenizer: Any, n: int) -> list[list[int]]:
    """The first n questions' prompts as the app rendered them, from the eval's answer journal."""
    from evaluation.runner import JOURNAL
    from retrieval.prompt import render_prompt

    lines = (folder / JOURNAL).read_text(encoding="utf-8").splitlines()[1:]  # line 1: the eval's options
    records = [json.loads(line)["record"] for line in lines if line.strip()]
    return [
        tokenizer.apply_chat_template(
            render_prompt(r["question"], r["passages"]),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for r in records[:n]
    ]


def prefill_seconds(gguf: Path, prompts: list[list[int]], threads: int) -> list[float]:
    """Prefill time of each prompt on a fresh context (the first token's time, less one decode step)."""
    import llama_cpp

    from app.backends.llamacpp_lm import llama_options

    llm = llama_cpp.Llama(model_path=str(gguf), **llama_options(threads, 2048))
    try:
        times = []
        for prompt in prompts:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            times.append(time.perf_counter() - t0)
        return times
    finally:
        llm.close()


def summarise_k(folder: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from benchmarks.starter_heldout import per_question_f1
    from evaluation.metrics import bootstrap_mean_ci

    answers = json.loads((folder / "report.json").read_text(encoding="utf-8"))["metrics"]
    f1 = per_question_f1(folder)
    row = {
        "n": len(f1),
        "f1": answers["answers"]["f1"],
        "f1_ci": bootstrap_mean_ci(list(f1.values()))["ci"],
        **{key: answers["answers"].get(key) for key in ANSWER_KEYS},
        "retrieval": {
            key: v for key, v in answers.get("retrieval", {}).items() if not isinstance(v, dict | list)
        },
    }
    return row, f1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, required=True, help="a RAGQA_HOME after `ragqa setup`")
    p.add_argument("--model", default=None, help="version to evaluate (default: the home's current)")
    p.add_argument(
        "--variants", default="4:off,4:448,2:off", help="k:max_prompt_tokens,... (the first is the reference)"
    )
    p.add_argument("--limit", type=int, default=200, help="held-out squad2 questions (seeded subset)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--ttft-prompts", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "passages_k")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from transformers import AutoTokenizer

    from benchmarks.machine import cpu, load_average
    from benchmarks.starter_heldout import run_eval, write_sets
    from evaluation.metrics import paired_bootstrap_ci
    from model_store.gguf import find_gguf
    from model_store.registry import ModelRegistry

    home = args.home.resolve()
    registry = ModelRegistry(home / "models")
    version = args.model or registry.current_name()
    if version is None:
        raise SystemExit(f"no model published in {home}: run `ragqa setup`")
    entry = registry.get(version)
    model_dir = entry.path
    gguf = find_gguf(model_dir, entry.manifest)  # the file the app serves (app/generator.py picks it so)
    if gguf is None:
        raise SystemExit(f"{model_dir} has no GGUF: `ragqa models gguf {version}`")
    env = {**os.environ, "RAGQA_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args.work.mkdir(parents=True, exist_ok=True)
    qa = write_sets(args.data, args.work)["squad2"]  # an eval resumes only with the same file path
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    variants = parse_variants(args.variants)
    result: dict[str, Any] = {
        "machine": {"cpu": cpu(), "load_average": load_average()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "version": version,
        "gguf": gguf.name,
        "trim_algorithm": TRIM_ALGORITHM,  # retrieval/passage_trim.py's version the trimmed variants ran
        "variants": {},
    }
    f1s: dict[str, dict[str, float]] = {}
    for k, limit in variants:
        name = variant_name(k, limit)
        folder = eval_folder(args.work, version, k, limit)
        load_before = load_average()
        wall = run_eval(qa, version, args.limit, folder, args.batch_size, env, k=k, max_prompt_tokens=limit)
        row, f1s[name] = summarise_k(folder)
        prompts = journal_prompts(folder, tokenizer, args.ttft_prompts)
        ttft = prefill_seconds(gguf, prompts, args.threads)
        row.update(
            k=k,
            max_prompt_tokens=limit,
            load_before=load_before,
            eval_wall_s=round(wall, 1),
            mean_prompt_tokens=round(statistics.mean(len(p) for p in prompts), 1),
            ttft_p50_s=round(statistics.median(ttft[1:] or ttft), 3),
            ttft_s=[round(t, 3) for t in ttft],
        )
        result["variants"][name] = row
        print(
            f"{name}: F1 {row['f1']:.3f} [{row['f1_ci'][0]:.3f}, {row['f1_ci'][1]:.3f}], "
            f"prompt {row['mean_prompt_tokens']:.0f} tokens, TTFT p50 {row['ttft_p50_s']:.2f} s",
            flush=True,
        )
    reference = variant_name(*variants[0])
    for name in f1s:
        if name != reference:
            ids = sorted(set(f1s[name]) & set(f1s[reference]))
            result["variants"][name][f"f1_minus_{reference}"] = paired_bootstrap_ci(
                [f1s[name][i] for i in ids], [f1s[reference][i] for i in ids]
            )
    result["load_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
