"""The headline experiment: does the feedback loop make the default model better on held-out questions?

Starting from the default model and an empty feedback store in a fresh RAGQA_HOME:
  1. split squad2-dev-half by ARTICLE (seeded): training articles feed the simulator, held-out articles are only
     ever evaluated; xquad-en minus every context that also appears in squad2-dev-half is a second held-out set;
  2. index the training articles' contexts and simulate rankings with scripts/simulate_feedback.py (k=4
     candidates ranked by token F1 vs the gold answer; `--correct-fraction` of the questions also get a gold
     correction, which are SFT's demonstrations) on answerable questions of the training articles;
  3. `ragqa retrain` (export, SFT, reward model, PPO, merge, gate, publish); the per-stage status, reason and
     wall time come from the run's state.json;
  4. evaluate v0001 (base), the SFT-only model and the final model (the published version, or the gated-out
     candidate when the gate refused it: both are evaluated and the report says which) with the full ask path
     (`evaluation.runner.run_eval`) on both held-out sets; RM win-rate vs base (the run's reward model),
     KL from the base along each model's own answers, answer length, wall time per stage;
  5. one report: report.json, report.md (before/after table, stages, sizes, machine load), PNG plots (PPO
     reward and KL curves, F1 by model, wall time).

    python benchmarks/loop.py --quick            # a few minutes: tiny subsets, 2 steps per training stage
    python benchmarks/loop.py                    # the full run (aim: < 60 min on the 2-core CPU)
    python benchmarks/loop.py --base-only        # only the base model's held-out numbers (no simulator/retrain)

The data files live in ../shared/data next to the repository (benchmark-only; pass --data to point elsewhere). Only squad2-dev-half's
training articles are trained or tuned on; xquad-en is held-out evaluation only. Results go to
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"  # ../shared/data, relative to the repository root
SQUAD2 = "squad2-dev-half/dev-v2.0.json"
XQUAD = "xquad-en/xquad.en.json"


# ---- sizes -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """How much of everything one run does; `retrain` are `ragqa retrain --set` overrides of default.yaml."""

    sim_limit: int
    correct_fraction: float
    eval_limit: int
    max_new_tokens: int
    kl_limit: int
    k: int  # passages shown to the model (the app's default is 4)
    retrain: tuple[str, ...] = field(default_factory=tuple)


# --quick: every training stage really trains (2 steps), on amounts that clear the lowered minimums.
# Both presets show the model k=2 passages: on the shared 2-core CPU every sampled, trained and evaluated token
# costs ~10x the figures measured on an idle machine, and 2 passages roughly halve the ~900-token prompts of k=4.
QUICK = Preset(
    sim_limit=12,
    correct_fraction=0.5,
    eval_limit=6,
    max_new_tokens=48,
    kl_limit=6,
    k=2,
    retrain=(
        "data.min_demonstrations=2",
        "data.min_pairs=2",
        "data.min_prompts=2",
        "sft.max_steps=2",
        "sft.batch_size=1",
        "sft.grad_accum=2",
        "sft.gradient_checkpointing=false",
        "reward.max_steps=2",
        "reward.batch_size=1",
        "reward.grad_accum=2",
        "reward.gradient_checkpointing=false",
        "ppo.total_steps=2",
        "ppo.batch_size=4",
        "ppo.mini_batch_size=2",
        "ppo.ppo_epochs=1",
        "ppo.max_new_tokens=32",
        "merge.check_prompts=1",
        "gate.num_prompts=4",
        "gate.max_new_tokens=32",
    ),
)
# The full run, sized from measured times on the shared 2-core CPU, which swing ~10x with the other jobs' load:
# at load ~1-2 (k=2) simulation ~8 s per question, SFT 4 steps 31 s, RM 4 steps 32 s, PPO ~27 s per step,
# evaluation ~2-3 s per answer: this preset is ~25 minutes; at load 4-6 (the quick run: 90 s per simulated
# question at k=4, PPO ~250 s per step) it is 2-3x that. Raise --sim-limit / --eval-limit on an idle machine.
FULL = Preset(
    sim_limit=40,
    correct_fraction=0.5,
    eval_limit=16,
    max_new_tokens=48,
    kl_limit=16,
    k=2,
    retrain=(
        "data.min_demonstrations=8",
        "sft.epochs=1",
        "sft.batch_size=1",
        "sft.grad_accum=2",
        "sft.gradient_checkpointing=false",
        "reward.max_steps=10",
        "reward.batch_size=1",
        "reward.grad_accum=2",
        "reward.gradient_checkpointing=false",
        "ppo.total_steps=6",
        "ppo.batch_size=4",
        "ppo.mini_batch_size=2",
        "ppo.ppo_epochs=1",
        "ppo.max_new_tokens=32",
        "merge.check_prompts=2",
        "gate.num_prompts=4",
        "gate.max_new_tokens=48",
    ),
)


# ---- data ------------------------------------------------------------------------------------------------------
def split_articles(squad: dict[str, Any], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(training titles, held-out titles): a seeded shuffle of the article titles, `heldout` of them held out."""
    titles = sorted(a["title"] for a in squad["data"])
    if not 0 < heldout < len(titles):
        raise SystemExit(f"--heldout-articles must be between 1 and {len(titles) - 1}, got {heldout}")
    random.Random(seed).shuffle(titles)
    return sorted(titles[heldout:]), sorted(titles[:heldout])


def subset_squad(squad: dict[str, Any], titles: list[str], answerable_only: bool = False) -> dict[str, Any]:
    """The SQuAD file restricted to `titles` (and to answerable questions when asked)."""
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
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_step(
    name: str, cmd: list[str], env: dict[str, str], log_dir: Path, timings: dict[str, float], loads: dict
) -> None:
    """Run one step, tee its output to log_dir/<name>.log, record its wall time and the 1-min load after it."""
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
    loads[name] = load_average()
    print(f"== {name}: {timings[name]} s (load {loads[name]})", flush=True)
    if rc != 0:
        raise SystemExit(f"step {name} failed with exit code {rc}; see {log_dir / (name + '.log')}")


def ragqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def simulate_command(train_qa: Path, args: argparse.Namespace) -> list[str]:
    """scripts/simulate_feedback.py on the training articles' answerable questions, k=4, no progress bar."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "simulate_feedback.py"),
        "--qa",
        str(train_qa),
        "--only-answerable",
        "--k-candidates",
        "4",
        "--limit",
        str(args.sim_limit),
        "--correct-fraction",
        str(args.correct_fraction),
        "--seed",
        str(args.seed),
        "--batch",
    ]


def retrain_command(args: argparse.Namespace) -> list[str]:
    """`ragqa retrain` with the preset's overrides, then the user's --retrain-args (which win)."""
    sets = [x for s in args.preset.retrain for x in ("--set", s)]
    return ragqa("retrain", *sets, *args.retrain_args.split())


# ---- what the retrain left -------------------------------------------------------------------------------------
def latest_run(home: Path) -> Path | None:
    runs = home / "runs"
    found = [p for p in runs.iterdir() if (p / "state.json").is_file()] if runs.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def stage_table(state: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per planned stage: status (done | skipped | failed | not run), reason, seconds."""
    rows = []
    for name in state.get("plan", []):
        s = state["stages"].get(name, {})
        rows.append(
            {
                "stage": name,
                "status": s.get("status", "not run"),
                "seconds": s.get("seconds"),
                "reason": s.get("reason"),
            }
        )
    return rows


def stage_output(state: dict[str, Any], stage: str, key: str) -> Path | None:
    value = state["stages"].get(stage, {}).get("outputs", {}).get(key)
    return Path(value) if value and Path(value).exists() else None


def publish_unlisted(home: Path, folder: Path, kind: str, note: str) -> str:
    """Publish a model folder into the benchmark's own registry without making it current (for evaluation)."""
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(home / "models")
    for known in registry.versions():  # an --eval-only rerun: published by the first pass already
        if known.manifest.get("kind") == kind and known.manifest.get("source") == str(folder):
            return known.name
    version = registry.publish_folder(
        folder, {"kind": kind, "source": str(folder), "note": note}, make_current=False
    )
    return version.name


def models_to_evaluate(home: Path, state: dict[str, Any], not_run: list[str]) -> tuple[dict[str, str], str]:
    """{"base": v0001, "sft": ..., "final": ...} and how the final model was obtained."""
    from model_store.registry import ModelRegistry

    versions = {"base": "v0001"}
    sft = stage_output(state, "sft", "merged")
    if sft is not None:
        versions["sft"] = publish_unlisted(home, sft, "sft-only", "the retrain's SFT stage, merged")
    else:
        not_run.append("SFT-only model: the retrain's SFT stage left no merged model (skipped or failed)")
    publish = state["stages"].get("publish", {})
    published = publish.get("outputs", {}).get("version") if publish.get("status") == "done" else None
    if published:
        versions["final"] = published
        how = f"published by the retrain as {published} ({publish.get('reason')})"
    else:
        candidate = stage_output(state, "merge", "merged")
        if candidate is not None:
            versions["final"] = publish_unlisted(
                home, candidate, "candidate-not-published", str(publish.get("reason"))
            )
            how = f"NOT published by the retrain ({publish.get('reason')}); its merged candidate is evaluated"
        else:
            how = "no final model: the retrain merged no policy"
            not_run.append(how)
    current = ModelRegistry(home / "models").current_name()
    return versions, how + f"; registry current = {current}"


# ---- KL of a model from the base -------------------------------------------------------------------------------
def answer_kl(policy_dir: Path, ref_dir: Path, results: list[Any], limit: int) -> dict[str, float]:
    """Mean per-token KL(policy || ref) of the next-token distributions along the policy's own answers.

    For each answer y (tokens y_1..y_T after the chat-template prompt): KL_t = sum_v p(v|y<t) (log p - log q),
    computed exactly over the vocabulary from logits of shape (1, seq, vocab); reported as the mean over all
    answer tokens and the mean per-answer sum.
    """
    import torch

    from model_store.loading import load_causal_lm, load_tokenizer
    from retrieval.prompt import render_prompt

    tok = load_tokenizer(policy_dir)
    policy = load_causal_lm(policy_dir, dtype=torch.bfloat16).eval()
    ref = load_causal_lm(ref_dir, dtype=torch.bfloat16).eval()
    token_kls: list[float] = []
    per_answer: list[float] = []
    for r in [r for r in results if r.error is None and r.answer][:limit]:
        messages = render_prompt(r.example.question, r.passages)
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        answer_ids = tok(r.answer, add_special_tokens=False)["input_ids"]
        if not answer_ids:
            continue
        ids = torch.tensor([list(prompt_ids) + answer_ids])
        with torch.inference_mode():
            logp = torch.log_softmax(policy(ids).logits[0, len(prompt_ids) - 1 : -1].float(), -1)
            logq = torch.log_softmax(ref(ids).logits[0, len(prompt_ids) - 1 : -1].float(), -1)
        kl = (logp.exp() * (logp - logq)).sum(-1)  # (answer_len,)
        token_kls.extend(kl.tolist())
        per_answer.append(float(kl.sum()))

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {"kl_per_token": mean(token_kls), "kl_per_answer": mean(per_answer), "answers": len(per_answer)}


# ---- evaluation ------------------------------------------------------------------------------------------------
def build_index(qa_file: Path, index_dir: Path, embedder: Any) -> None:
    """Index a QA file's contexts once (the app's chunking); every version is evaluated on the same index."""
    from app.config import AppConfig
    from evaluation.formats import load_qa
    from evaluation.runner import write_corpus
    from retrieval.ingest import ingest

    cfg = AppConfig.load()
    corpus = index_dir.parent / f"{index_dir.name}-corpus"
    write_corpus(load_qa(qa_file), corpus)
    ingest(
        corpus,
        index_dir,
        embedder,
        progress=False,
        **cfg.ingest_options(),
    )


def evaluate_versions(
    sets: dict[str, Path], versions: dict[str, str], args: argparse.Namespace, out: Path, embedder: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[Any]]], dict[str, float]]:
    """metrics[set][label], results[set][label], eval wall time per (set, label)."""
    from evaluation.runner import EvalOptions, run_eval

    metrics: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, list[Any]]] = {}
    walls: dict[str, float] = {}
    for set_name, qa_file in sets.items():
        t0 = time.perf_counter()
        index_dir = out / "indexes" / set_name
        build_index(qa_file, index_dir, embedder)
        walls[f"index {set_name}"] = round(time.perf_counter() - t0, 1)
        metrics[set_name], results[set_name] = {}, {}
        for label, version in versions.items():
            t0 = time.perf_counter()
            print(f"\n== eval {set_name} / {label} ({version})", flush=True)
            run = run_eval(
                EvalOptions(
                    qa_file,
                    model=version,
                    limit=args.eval_limit,
                    seed=args.seed,
                    index_dir=index_dir,
                    max_new_tokens=args.max_new_tokens,
                    out_dir=out / "evals" / f"{set_name}-{label}",
                    progress=True,
                ),
                embedder=embedder,
            )
            metrics[set_name][label] = run.report["metrics"]
            results[set_name][label] = run.results
            walls[f"eval {set_name} {label}"] = round(time.perf_counter() - t0, 1)
            print(f"== eval {set_name} / {label}: {walls[f'eval {set_name} {label}']} s", flush=True)
    return metrics, results, walls


def rm_win_rates(results: dict[str, dict[str, list[Any]]], rm_dir: Path | None) -> dict[str, Any]:
    """Win rate of each trained model over the base, judged by the run's reward model (F1 when there is none)."""
    from evaluation.runner import reward_scores, win_rate
    from model_store.reward import RewardScorer

    scorer = RewardScorer(rm_dir) if rm_dir is not None else None
    out: dict[str, Any] = {"reward_model": str(rm_dir) if rm_dir else None}
    for set_name, by_label in results.items():
        rewards = reward_scores(scorer, by_label) if scorer else None
        out[set_name] = {}
        for label in by_label:
            if label == "base":
                continue
            out[set_name][label] = win_rate(by_label["base"], by_label[label], rewards, ("base", label))
            if rewards:
                ok = [x for x in rewards[label] if x is not None]
                base = [x for x in rewards["base"] if x is not None]
                out[set_name][label]["mean_reward"] = sum(ok) / len(ok) if ok else None
                out[set_name][label]["mean_reward_base"] = sum(base) / len(base) if base else None
    return out


def read_ppo_metrics(run_dir: Path | None) -> list[dict[str, float]]:
    path = run_dir / "ppo" / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---- report ----------------------------------------------------------------------------------------------------
ROWS = (
    ("F1", "answers", "f1"),
    ("EM", "answers", "em"),
    ("F1 answerable", "answers", "f1_answerable"),
    ("contains gold (answerable)", "answers", "contains_gold_rate"),
    ("abstention rate", "answers", "abstention_rate"),
    ("abstention precision", "answers", "abstention_precision"),
    ("abstention recall", "answers", "abstention_recall"),
    ("citation correctness", "answers", "citation_correctness"),
    ("mean answer words", "answers", "mean_answer_words"),
    ("unfinished (hit token cap)", "answers", "unfinished_rate"),
    ("recall@5 (retrieval)", "retrieval", "recall@5"),
    ("total latency p50 ms", "latency_ms", "total_p50"),
)


def metric_rows(report: dict[str, Any], set_name: str) -> list[tuple[Any, ...]]:
    """The before/after table of one held-out set: one row per metric, one column per model."""
    by_label = report["metrics"][set_name]
    labels = list(by_label)
    rows: list[tuple[Any, ...]] = [
        (name, *(by_label[lb].get(sec, {}).get(key) for lb in labels)) for name, sec, key in ROWS
    ]
    wins = (report.get("rm_win_rate") or {}).get(set_name) or {}
    if wins:
        judge = next(iter(wins.values()))["judge"]
        rows.append((f"win rate vs base ({judge})", *(wins.get(lb, {}).get("win_rate_b") for lb in labels)))
        rows.append(("mean RM reward", *(_mean_reward(wins, lb) for lb in labels)))
    kls = report.get("kl_vs_base") or {}  # over both held-out sets' answers: the same in each table
    rows.append(
        ("KL vs base, nats/token (both sets)", *((kls.get(lb) or {}).get("kl_per_token") for lb in labels))
    )
    rows.append(
        ("KL vs base, nats/answer (both sets)", *((kls.get(lb) or {}).get("kl_per_answer") for lb in labels))
    )
    return rows


def _mean_reward(wins: dict[str, Any], label: str) -> float | None:
    if label == "base":
        first = next(iter(wins.values()), {})
        return first.get("mean_reward_base")
    return wins.get(label, {}).get("mean_reward")


def plot_f1_by_model(report: dict[str, Any], path: Path, plt: Any) -> str:
    sets = list(report["metrics"])
    labels = list(next(iter(report["metrics"].values())))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(sets))]
        ys = [report["metrics"][s][label]["answers"].get("f1") or 0.0 for s in sets]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(sets))], sets)
    ax.set_ylabel("token F1")
    ax.set_title("held-out F1 by model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_ppo(ppo: list[dict[str, float]], path: Path, plt: Any) -> str | None:
    """Two panels: the reward model's score and the KL to the reference, per PPO step."""
    if not ppo:
        return None
    steps = [m["step"] for m in ppo]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in zip(
        axes, ("score", "kl"), ("PPO reward (RM score)", "PPO KL to reference"), strict=True
    ):
        ax.plot(steps, [m.get(key, float("nan")) for m in ppo], marker="o", markersize=3)
        ax.set_xlabel("PPO step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_wall(wall: dict[str, float], path: Path, plt: Any) -> str:
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(wall) + 1.2))
    ax.barh(list(wall), list(wall.values()))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("wall time per stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_report(report: dict[str, Any], out: Path) -> None:
    from evaluation.reports import fmt, md_table, print_table, pyplot

    plt = pyplot()
    charts = {"wall_time": plot_wall(report["wall_s"], out / "wall_time.png", plt)}
    if report["metrics"]:
        charts["f1_by_model"] = plot_f1_by_model(report, out / "f1_by_model.png", plt)
    ppo_png = plot_ppo(report.get("ppo_steps") or [], out / "ppo_reward_kl.png", plt)
    if ppo_png:
        charts["ppo_reward_kl"] = ppo_png
    report["charts"] = charts
    write_json(out / "report.json", report)

    s = report["settings"]
    md = [f"# Feedback loop: before / after ({'quick' if report['quick'] else 'full'} run)", ""]
    md += [
        f"- Started {report['started_at']}, total wall time {fmt(report['wall_s'].get('total'), 0)} s; "
        f"machine: {report['machine']}.",
        f"- Load average (1 min) at start {report['load']['start']}, after each step: "
        + ", ".join(f"{k} {v}" for k, v in report["load"].items() if k != "start")
        + " (2 cores shared with other work: timings are inflated by the load).",
        f"- Training articles ({len(report['split']['train'])}): {', '.join(report['split']['train'])}.",
        f"- Held-out articles ({len(report['split']['heldout'])}): {', '.join(report['split']['heldout'])}.",
        f"- xquad-en minus {report['split']['xquad_removed']} contexts shared with squad2-dev-half.",
        f"- Sizes: {s['sim_limit']} simulated questions (4 candidates each, correct fraction "
        f"{s['correct_fraction']}), {s.get('k', 4)} passages shown to the model, "
        f"{s['eval_limit']} questions per held-out set and model, answers capped at {s['max_new_tokens']} "
        f"new tokens, KL over {s['kl_limit']} answers; retrain overrides: `{' '.join(s['retrain'])}`.",
        f"- Simulation: {report.get('simulation') or '-'}",
        f"- Models: {report['versions']}; final model: {report.get('final_how')}.",
        f"- Reward model judging the win rate: {report['rm_win_rate'].get('reward_model')}.",
        "",
    ]
    for set_name, by_label in report["metrics"].items():
        labels = list(by_label)
        rows = metric_rows(report, set_name)
        n = by_label[labels[0]]["counts"]
        md += [
            f"## {set_name} ({n['questions']} questions, {n['unanswerable']} unanswerable)",
            "",
            md_table(["metric", *labels], rows),
            "",
        ]
        print_table(f"loop: {set_name}", ["metric", *labels], rows)
    if "f1_by_model" in charts:
        md += ["![F1 by model](f1_by_model.png)", ""]
    if report.get("retrain_stages"):
        md += ["## Retrain stages", ""]
        md.append(
            md_table(
                ["stage", "status", "seconds", "reason"],
                [
                    (r["stage"], r["status"], r["seconds"], r["reason"] or "")
                    for r in report["retrain_stages"]
                ],
            )
        )
        md += ["", f"Retrain key metrics: `{json.dumps(report.get('retrain_metrics'), default=str)}`", ""]
    if ppo_png:
        md += ["## PPO", "", "![PPO reward and KL](ppo_reward_kl.png)", ""]
    md += [
        "## Wall time per stage",
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


def retrain_key_metrics(state: dict[str, Any]) -> dict[str, Any]:
    """The few retrain numbers the loop report shows (data counts, losses, RM accuracy, PPO, gate)."""
    keep = {
        "export": ("demonstrations_train", "pairs_train", "prompts_train", "prompts_test"),
        "sft": ("steps", "train_loss", "eval_loss"),
        "rm": ("pairs_used", "pairs_dropped_too_long", "steps", "train_loss", "heldout_accuracy"),
        "ppo": ("steps", "score_first", "score_last", "kl_last", "response_length_last", "seconds_per_step"),
        "merge": ("max_abs_logit_diff",),
        "evaluate": ("prompts", "win_rate", "reward_delta", "kl", "kl_per_token"),
    }
    out: dict[str, Any] = {}
    for stage, keys in keep.items():
        metrics = state["stages"].get(stage, {}).get("metrics") or {}
        picked = {k: metrics[k] for k in keys if metrics.get(k) is not None}
        if picked:
            out[stage] = picked
    gate = (state["stages"].get("publish", {}).get("metrics") or {}).get("gate")
    if gate:
        out["gate"] = {"publish": gate.get("publish"), "reasons": gate.get("reasons")}
    return out


# ---- main ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subsets, 2 steps per stage: a few minutes")
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
    p.add_argument("--sim-limit", type=int, default=None, help="training questions to simulate")
    p.add_argument("--correct-fraction", type=float, default=None)
    p.add_argument("--eval-limit", type=int, default=None, help="questions per held-out set")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer cap (simulation and evaluation)")
    p.add_argument("--kl-limit", type=int, default=None, help="answers the KL is averaged over")
    p.add_argument("--k", type=int, default=None, help="passages shown to the model (preset: 2)")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="reuse --home from an earlier loop run: skip setup, simulation and retrain, evaluate again",
    )
    p.add_argument("--retrain-args", default="", help="extra arguments for `ragqa retrain` (quoted)")
    args = p.parse_args(argv)
    args.preset = QUICK if args.quick else FULL
    for name in ("sim_limit", "correct_fraction", "eval_limit", "max_new_tokens", "kl_limit", "k"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(args.preset, name))
    return args


def prepare_home(args: argparse.Namespace) -> Path:
    """A fresh RAGQA_HOME whose config.yaml caps answers (simulated candidates and evaluation alike)."""
    home = (args.home or Path(tempfile.mkdtemp(prefix="ragqa-loop-"))).resolve()
    if args.eval_only:
        if latest_run(home) is None:
            raise SystemExit(
                f"--eval-only needs --home of an earlier loop run with a retrain; {home} has none"
            )
        return home
    if home.exists() and any(home.iterdir()):
        raise SystemExit(f"{home} is not empty: the loop starts from an empty store (give a new --home)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(
        f"max_new_tokens: {args.max_new_tokens}\nk: {args.k}\ndemo_corpus: false\n"
    )
    return home


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    home = prepare_home(args)
    os.environ["RAGQA_HOME"] = str(home)  # in-process evaluation reads the same home as the subprocesses
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = (args.out or ROOT / "benchmarks" / "results" / "loop" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    wall: dict[str, float] = {}
    loads: dict[str, float] = {"start": load_average()}
    not_run: list[str] = []
    print(f"loop: RAGQA_HOME={home}, results in {out}, load {loads['start']}", flush=True)

    squad = json.loads((args.data / SQUAD2).read_text())
    train_titles, heldout_titles = split_articles(squad, args.heldout_articles, args.seed)
    data_dir = out / "data"
    train_qa = write_json(
        data_dir / "train_answerable.json", subset_squad(squad, train_titles, answerable_only=True)
    )
    heldout_qa = write_json(data_dir / "squad2_heldout.json", subset_squad(squad, heldout_titles))
    xq, removed = xquad_minus(json.loads((args.data / XQUAD).read_text()), squad)
    xquad_qa = write_json(data_dir / "xquad_minus_squad2.json", xq)

    if not args.eval_only:
        run_step("setup", ragqa("setup", "--no-demo"), env, logs, wall, loads)
    state: dict[str, Any] = {}
    run_dir = None
    simulation = None
    versions = {"base": "v0001"}
    final_how = None
    if args.base_only:
        not_run.append("simulate + retrain (--base-only)")
    elif args.eval_only:
        run_dir = latest_run(home)
        state = json.loads((run_dir / "state.json").read_text())
        not_run.append(
            f"setup, simulate, retrain: --eval-only reused {run_dir} (their times are the first pass's)"
        )
        for row in stage_table(state):
            if row["seconds"] is not None:
                wall[f"retrain: {row['stage']}"] = row["seconds"]
        sim_log = logs / "simulate.log"
        if sim_log.is_file():
            simulation = next(
                (ln for ln in sim_log.read_text().splitlines() if ln.startswith("simulated")), None
            )
        versions, final_how = models_to_evaluate(home, state, not_run)
    else:
        from evaluation.formats import load_qa
        from evaluation.runner import write_corpus

        corpus = data_dir / "train_corpus"
        write_corpus(load_qa(train_qa), corpus)  # every training article's contexts: the simulator's corpus
        run_step("ingest", ragqa("ingest", str(corpus)), env, logs, wall, loads)
        run_step("simulate", simulate_command(train_qa, args), env, logs, wall, loads)
        simulation = next(
            (ln for ln in (logs / "simulate.log").read_text().splitlines() if ln.startswith("simulated")),
            None,
        )
        try:
            run_step("retrain", retrain_command(args), env, logs, wall, loads)
        except (
            SystemExit
        ) as e:  # evaluate what the run left (SFT model, candidate); the report says it failed
            not_run.append(f"retrain FAILED: {e}")
        finally:
            run_dir = latest_run(home)
            state = json.loads((run_dir / "state.json").read_text()) if run_dir else {}
            for row in stage_table(state) if state else []:
                if row["seconds"] is not None:
                    wall[f"retrain: {row['stage']}"] = row["seconds"]
        versions, final_how = models_to_evaluate(home, state, not_run)

    from retrieval.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    sets = {"squad2_heldout": heldout_qa, "xquad_minus_squad2": xquad_qa}
    metrics, results, eval_walls = evaluate_versions(sets, versions, args, out, embedder)
    wall.update(eval_walls)
    loads["eval"] = load_average()

    t0 = time.perf_counter()
    rm_dir = stage_output(state, "rm", "merged") if state else None
    wins = rm_win_rates(results, rm_dir)
    wall["rm win-rate scoring"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    kls: dict[str, Any] = {}
    from model_store.registry import ModelRegistry

    reg = ModelRegistry(home / "models")
    for label in (lb for lb in versions if lb != "base"):
        answers = results["squad2_heldout"][label] + results["xquad_minus_squad2"][label]
        kls[label] = answer_kl(reg.get(versions[label]).path, reg.get("v0001").path, answers, args.kl_limit)
    wall["kl"] = round(time.perf_counter() - t0, 1)
    wall["total"] = round(time.perf_counter() - t_start, 1)
    loads["end"] = load_average()
    report = {
        "quick": args.quick,
        "started_at": started,
        "machine": f"{os.cpu_count()} CPU cores, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
        "home": str(home),
        "seed": args.seed,
        "split": {"train": train_titles, "heldout": heldout_titles, "xquad_removed": removed},
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("data", "home", "out", "preset")},
            "retrain": [*args.preset.retrain, *args.retrain_args.split()],
        },
        "simulation": simulation,
        "versions": versions,
        "final_how": final_how,
        "retrain_run": str(run_dir) if run_dir else None,
        "retrain_stages": stage_table(state) if state else [],
        "retrain_metrics": retrain_key_metrics(state) if state else {},
        "metrics": metrics,
        "rm_win_rate": wins,
        "kl_vs_base": kls,
        "ppo_steps": read_ppo_metrics(run_dir),
        "wall_s": wall,
        "load": loads,
        "not_run": not_run,
    }
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
