"""The headline experiment: does the feedback loop make the default model better on held-out questions?

Starting from the default model and an empty feedback store in a fresh RAGQA_HOME:
  1. split squad2-dev-half by ARTICLE (seeded): training articles feed the simulator, held-out articles are only
     ever evaluated; xquad-en minus every context that also appears in squad2-dev-half is a second held-out set;
  2. simulate rankings with scripts/simulate_feedback.py (k=4 candidates ranked by token-F1 vs the gold answer,
     `--correct-fraction` of them get a gold correction) on answerable questions of the training articles;
  3. `ragqa retrain` (all stages: SFT, reward model, PPO, merge, gate) and publish;
  4. evaluate v0001 (base), the SFT-only model (when the retrain run left one) and the final model with the full
     ask path (`app.evaluation.runner.run_eval`) on both held-out sets; RM win-rate of final vs base, the KL of the
     final model from the base along the final model's own answers, answer length, wall time per stage;
  5. one report (report.json, report.md with a before/after table, PNG plots).

    python benchmarks/loop.py --quick            # a few minutes: tiny subsets
    python benchmarks/loop.py                    # the full run (aim: < 60 min on the 2-core CPU)
    python benchmarks/loop.py --base-only        # only the base model's held-out numbers (no simulator/retrain)

The data files live in /work/shared/data (benchmark-only; pass --data to point elsewhere). Results go to
benchmarks/results/loop/<stamp>/ unless --out is given. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path("/work/shared/data")
SQUAD2 = "squad2-dev-half/dev-v2.0.json"
XQUAD = "xquad-en/xquad.en.json"


# ---- data ------------------------------------------------------------------------------------------------------
def split_articles(squad: dict[str, Any], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training titles, held-out titles): a seeded shuffle of the article titles, `heldout` of them held out."""
    titles = sorted(a["title"] for a in squad["data"])
    random.Random(seed).shuffle(titles)
    return sorted(titles[heldout:]), sorted(titles[:heldout])


def subset_squad(squad: dict[str, Any], titles: list[str], answerable_only: bool = False) -> dict[str, Any]:
    keep = set(titles)
    data = []
    for article in squad["data"]:
        if article["title"] not in keep:
            continue
        paragraphs = []
        for p in article["paragraphs"]:
            qas = [q for q in p["qas"] if not (answerable_only and q.get("is_impossible"))]
            if qas:
                paragraphs.append({**p, "qas": qas})
        data.append({**article, "paragraphs": paragraphs})
    return {"version": squad.get("version", "v2.0"), "data": data}


def xquad_minus(xquad: dict[str, Any], squad: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """xquad-en without the contexts that squad2-dev-half also has (78 of 240); returns (data, removed)."""
    seen = {" ".join(p["context"].split()) for a in squad["data"] for p in a["paragraphs"]}
    removed = 0
    data = []
    for article in xquad["data"]:
        paragraphs = [p for p in article["paragraphs"] if " ".join(p["context"].split()) not in seen]
        removed += len(article["paragraphs"]) - len(paragraphs)
        if paragraphs:
            data.append({**article, "paragraphs": paragraphs})
    return {"version": xquad.get("version", "1.1"), "data": data}, removed


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


# ---- steps as subprocesses -------------------------------------------------------------------------------------
def run_step(
    name: str, cmd: list[str], env: dict[str, str], log_dir: Path, timings: dict[str, float]
) -> None:
    """Run one step, tee its output to log_dir/<name>.log, record its wall time; stop the loop if it fails."""
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    timings[name] = round(time.perf_counter() - t0, 1)
    if rc != 0:
        raise SystemExit(f"step {name} failed with exit code {rc}; see {log_dir / (name + '.log')}")


def ragqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


# ---- the SFT-only model ----------------------------------------------------------------------------------------
def find_sft_model(home: Path) -> Path | None:
    """A model folder (config.json + weights) or LoRA adapter the newest retrain run left for its SFT stage."""
    runs = (
        sorted((home / "runs").glob("*"), key=lambda p: p.stat().st_mtime) if (home / "runs").is_dir() else []
    )
    for run in reversed(runs):
        for marker in ("config.json", "adapter_config.json"):
            hits = sorted(p.parent for p in run.rglob(marker) if "sft" in str(p.relative_to(run)).lower())
            merged = [h for h in hits if "merge" in h.name.lower()]
            if merged or hits:
                return (merged or hits)[0]
    return None


def publish_sft(home: Path, folder: Path) -> str | None:
    """Publish the SFT-only model into the benchmark's own registry (not current) so run_eval can load it."""
    from training.modeling import load_causal_lm, load_tokenizer
    from training.registry import ModelRegistry

    registry = ModelRegistry(home / "models")
    if (folder / "config.json").is_file():
        return registry.publish_folder(
            folder, {"kind": "sft-only", "source": str(folder)}, make_current=False
        ).name
    base = registry.base()
    if base is None:
        return None
    from peft import PeftModel

    merged = PeftModel.from_pretrained(load_causal_lm(base.path), str(folder)).merge_and_unload()
    tok = load_tokenizer(base.path)

    def write(out: Path) -> None:
        merged.save_pretrained(out)
        tok.save_pretrained(out)

    return registry.publish(write, {"kind": "sft-only", "source": str(folder)}, make_current=False).name


# ---- KL of the final model from the base ------------------------------------------------------------------------
def answer_kl(policy_dir: Path, ref_dir: Path, results: list[Any], limit: int) -> dict[str, float]:
    """Mean per-token KL(policy || ref) of the next-token distributions along the policy's own answers.

    For each answer y (tokens y_1..y_T after the chat-template prompt): KL_t = sum_v p(v|y<t) (log p - log q),
    computed exactly over the vocabulary from logits of shape (1, seq, vocab); reported as the mean over all
    answer tokens and the mean per-answer sum.
    """
    import torch

    from retrieval.prompt import render_prompt
    from training.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir, dtype=torch.bfloat16).eval()
    ref = load_causal_lm(ref_dir, dtype=torch.bfloat16).eval()
    token_kls: list[float] = []
    per_answer: list[float] = []
    for r in [r for r in results if r.error is None and r.answer][:limit]:
        messages = render_prompt(r.example.question, r.passages)
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        answer_ids = tok(r.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(policy(ids).logits[0, len(prompt_ids) - 1 : -1].float(), -1)
            logq = torch.log_softmax(ref(ids).logits[0, len(prompt_ids) - 1 : -1].float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # (answer_len,)
        token_kls.extend(kl.tolist())
        per_answer.append(float(kl.sum()))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"kl_per_token": mean(token_kls), "kl_per_answer": mean(per_answer), "answers": len(per_answer)}


# ---- evaluation ------------------------------------------------------------------------------------------------
def build_index(qa_file: Path, index_dir: Path, embedder: Any) -> None:
    """Index a QA file's contexts once; every version is then evaluated against the same index."""
    from app.evaluation.formats import load_qa
    from app.evaluation.runner import write_corpus
    from retrieval.ingest import ingest

    corpus = index_dir.parent / f"{index_dir.name}-corpus"
    write_corpus(load_qa(qa_file), corpus)
    ingest(corpus, index_dir, embedder, progress=True)


def evaluate_versions(
    sets: dict[str, Path], versions: dict[str, str], args: argparse.Namespace, out: Path, embedder: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[Any]]], dict[str, float]]:
    """metrics[set][label], results[set][label], eval wall time per set."""
    from app.evaluation.runner import EvalOptions, run_eval

    metrics: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, list[Any]]] = {}
    walls: dict[str, float] = {}
    for set_name, qa_file in sets.items():
        t0 = time.perf_counter()
        index_dir = out / "indexes" / set_name
        build_index(qa_file, index_dir, embedder)
        metrics[set_name], results[set_name] = {}, {}
        for label, version in versions.items():
            run = run_eval(
                EvalOptions(
                    qa_file,
                    model=version,
                    limit=args.eval_limit,
                    seed=args.seed,
                    index_dir=index_dir,
                    max_new_tokens=args.max_new_tokens,
                    out_dir=out / "evals" / f"{set_name}-{label}",
                ),
                embedder=embedder,
            )
            metrics[set_name][label] = run.report["metrics"]
            results[set_name][label] = run.results
        walls[set_name] = round(time.perf_counter() - t0, 1)
    return metrics, results, walls


def rm_win_rates(results: dict[str, dict[str, list[Any]]], home: Path) -> dict[str, Any]:
    from app.evaluation.reward_scoring import load_scorer
    from app.evaluation.runner import reward_scores, win_rate
    from training.registry import ModelRegistry

    scorer = load_scorer(None, ModelRegistry(home / "models"), required=False)
    out: dict[str, Any] = {"reward_model": str(scorer.path) if scorer else None}
    for set_name, by_label in results.items():
        if "final" not in by_label:
            continue
        pair = {"base": by_label["base"], "final": by_label["final"]}
        rewards = reward_scores(scorer, pair) if scorer else None
        out[set_name] = win_rate(pair["base"], pair["final"], rewards, ("base", "final"))
    return out


# ---- report ----------------------------------------------------------------------------------------------------
ROWS = (
    ("EM", "answers", "em"),
    ("F1", "answers", "f1"),
    ("F1 answerable", "answers", "f1_answerable"),
    ("contains gold", "answers", "contains_gold_rate"),
    ("abstention P", "answers", "abstention_precision"),
    ("abstention R", "answers", "abstention_recall"),
    ("citation correctness", "answers", "citation_correctness"),
    ("mean answer words", "answers", "mean_answer_words"),
    ("recall@5", "retrieval", "recall@5"),
    ("total latency p50 ms", "latency_ms", "total_p50"),
)


def write_report(report: dict[str, Any], out: Path) -> None:
    from app.evaluation.reports import fmt, md_table, print_table, pyplot

    plt = pyplot()
    charts = {}
    for set_name, by_label in report["metrics"].items():
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        labels = list(by_label)
        for ax, key in zip(axes, ("f1", "em"), strict=True):
            ax.bar(labels, [by_label[lb]["answers"][key] or 0 for lb in labels], color="tab:blue")
            ax.set_title(f"{set_name}: {key.upper()}")
            ax.set_ylim(0, 1)
        fig.tight_layout()
        charts[f"{set_name}_f1_em"] = f"{set_name}_f1_em.png"
        fig.savefig(out / charts[f"{set_name}_f1_em"], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    stages = report["wall_s"]
    ax.barh(list(stages), list(stages.values()))
    ax.set_xlabel("seconds")
    ax.set_title("wall time per stage")
    fig.tight_layout()
    charts["wall_time"] = "wall_time.png"
    fig.savefig(out / "wall_time.png", dpi=110)
    plt.close(fig)
    report["charts"] = charts
    write_json(out / "report.json", report)

    md = [f"# Feedback loop: before / after ({'quick' if report['quick'] else 'full'} run)", ""]
    md.append(
        f"Training articles: {', '.join(report['split']['train'])}. Held out: {', '.join(report['split']['heldout'])}."
    )
    md.append(f"xquad-en minus {report['split']['xquad_removed']} contexts shared with squad2-dev-half.")
    md.append(f"Versions: {report['versions']}. Reward model: {report['rm_win_rate'].get('reward_model')}.")
    md.append("")
    for set_name, by_label in report["metrics"].items():
        labels = list(by_label)
        rows = [(name, *(by_label[lb][sec][key] for lb in labels)) for name, sec, key in ROWS]
        win = report["rm_win_rate"].get(set_name)
        if win:
            rows.append(
                (f"win rate final vs base ({win['judge']})", *([""] * (len(labels) - 1)), win["win_rate_b"])
            )
        md += [
            f"## {set_name}",
            "",
            md_table(["metric", *labels], rows),
            "",
            f"![f1/em]({charts[f'{set_name}_f1_em']})",
            "",
        ]
        print_table(f"loop: {set_name}", ["metric", *labels], rows)
    kl = report.get("kl_final_vs_base") or {}
    md += [
        "## KL and wall time",
        "",
        f"KL(final || base) along the final model's held-out answers: {fmt(kl.get('kl_per_token'), 4)} nats/token, "
        f"{fmt(kl.get('kl_per_answer'), 3)} nats/answer over {kl.get('answers', 0)} answers.",
        "",
        md_table(["stage", "seconds"], list(report["wall_s"].items())),
        "",
        "![wall time](wall_time.png)",
        "",
    ]
    if report.get("not_run"):
        md += ["## Not run", "", *[f"- {x}" for x in report["not_run"]], ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    print(f"report: {out / 'report.md'}")


# ---- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subsets: a few minutes")
    p.add_argument(
        "--base-only", action="store_true", help="evaluate the base model only (no simulator, retrain)"
    )
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument(
        "--home", type=Path, default=None, help="RAGQA_HOME to create (default: a fresh temp folder)"
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-articles", type=int, default=4)
    p.add_argument(
        "--sim-limit", type=int, default=None, help="training questions to simulate (200; quick 16)"
    )
    p.add_argument("--correct-fraction", type=float, default=0.2)
    p.add_argument("--eval-limit", type=int, default=None, help="questions per held-out set (80; quick 8)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer cap in evaluation (96; quick 48)")
    p.add_argument("--kl-limit", type=int, default=40)
    p.add_argument("--retrain-args", default="", help="extra arguments for `ragqa retrain` (quoted)")
    args = p.parse_args(argv)
    args.sim_limit = args.sim_limit or (16 if args.quick else 200)
    args.eval_limit = args.eval_limit or (8 if args.quick else 80)
    args.max_new_tokens = args.max_new_tokens or (48 if args.quick else 96)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    home = (args.home or Path(tempfile.mkdtemp(prefix="ragqa-loop-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["RAGQA_HOME"] = str(home)  # in-process evaluation reads the same home as the subprocesses
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = (args.out or ROOT / "benchmarks" / "results" / "loop" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    wall: dict[str, float] = {}
    not_run: list[str] = []

    squad = json.loads((args.data / SQUAD2).read_text())
    train_titles, heldout_titles = split_articles(squad, args.heldout_articles, args.seed)
    data_dir = out / "data"
    train_qa = write_json(
        data_dir / "train_answerable.json", subset_squad(squad, train_titles, answerable_only=True)
    )
    heldout_qa = write_json(data_dir / "squad2_heldout.json", subset_squad(squad, heldout_titles))
    xq, removed = xquad_minus(json.loads((args.data / XQUAD).read_text()), squad)
    xquad_qa = write_json(data_dir / "xquad_minus_squad2.json", xq)

    run_step("setup", ragqa("setup", "--no-demo"), env, out / "logs", wall)
    versions = {"base": "v0001"}
    if args.base_only:
        not_run.append("simulate + retrain (--base-only)")
    else:
        simulator = ROOT / "scripts" / "simulate_feedback.py"
        if not simulator.is_file():
            raise SystemExit(f"{simulator} is not in the repo yet; run with --base-only")
        corpus = data_dir / "train_corpus"
        from app.evaluation.formats import load_qa
        from app.evaluation.runner import write_corpus

        write_corpus(load_qa(train_qa), corpus)
        run_step("ingest", ragqa("ingest", str(corpus)), env, out / "logs", wall)
        run_step(
            "simulate",
            [
                sys.executable,
                str(simulator),
                "--qa",
                str(train_qa),
                "--limit",
                str(args.sim_limit),
                "--k",
                "4",
                "--correct-fraction",
                str(args.correct_fraction),
                "--seed",
                str(args.seed),
            ],
            env,
            out / "logs",
            wall,
        )
        run_step("retrain", ragqa("retrain", *args.retrain_args.split()), env, out / "logs", wall)
        from training.registry import ModelRegistry

        final = ModelRegistry(home / "models").current_name()
        if final in (None, "v0001"):
            not_run.append("final model: the retrain published no new version (gate failed?)")
        else:
            versions["final"] = final
        sft_dir = find_sft_model(home)
        sft = publish_sft(home, sft_dir) if sft_dir else None
        if sft:
            versions = {"base": "v0001", "sft": sft, **{k: v for k, v in versions.items() if k != "base"}}
        else:
            not_run.append("SFT-only model: no SFT output found under RAGQA_HOME/runs")

    from retrieval.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    t0 = time.perf_counter()
    sets = {"squad2_heldout": heldout_qa, "xquad_minus_squad2": xquad_qa}
    metrics, results, eval_walls = evaluate_versions(sets, versions, args, out, embedder)
    wall.update({f"eval {k}": v for k, v in eval_walls.items()})
    wins = rm_win_rates(results, home)
    kl = None
    if "final" in versions:
        from training.registry import ModelRegistry

        reg = ModelRegistry(home / "models")
        kl = answer_kl(
            reg.get(versions["final"]).path,
            reg.get("v0001").path,
            results["squad2_heldout"]["final"],
            args.kl_limit,
        )
    wall["eval total"] = round(time.perf_counter() - t0, 1)
    report = {
        "quick": args.quick,
        "home": str(home),
        "seed": args.seed,
        "split": {"train": train_titles, "heldout": heldout_titles, "xquad_removed": removed},
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "home", "out")},
        "versions": versions,
        "metrics": metrics,
        "rm_win_rate": wins,
        "kl_final_vs_base": kl,
        "wall_s": wall,
        "not_run": not_run,
    }
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
