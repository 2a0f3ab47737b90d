"""The headline experiment: does the feedback loop make the default model better on held-out questions?

Starting from the default model and an empty feedback store in a fresh RAGQA_HOME:
  1. split squad2-dev-half by ARTICLE (seeded): training articles feed the simulator, held-out articles are only
     ever evaluated; xquad-en minus every context that also appears in squad2-dev-half is a second held-out set;
  2. index the training articles' contexts and simulate rankings with scripts/simulate_feedback.py (k=4
     candidates ranked by token F1 vs the gold answer, unanswerable questions included: their right answer is
     the abstention sentence; `--correct-fraction` of the questions also get a gold correction, which are SFT's
     demonstrations), questions sampled in batches;
  3. `ragqa retrain --from base` (export, SFT, reward model, PPO, merge, gate, publish) from the raw v0001, then
     a second retrain with `algorithm=dpo` on the same export (not published); the per-stage status, reason and
     wall time come from each run's state.json;
  4. evaluate v0001 (base), the SFT-only model, the final model (the published PPO version, or the gated-out
     candidate when the gate refused it: both are evaluated and the report says which) and the DPO model with
     the full ask path (`evaluation.runner.run_eval`, batched) on both held-out sets; per model F1, EM,
     contains-gold, abstention precision/recall, words, KL from the base (and from SFT) along the model's own
     answers, with a bootstrap 95% CI of the mean F1; paired differences final - base, final - SFT, PPO - DPO
     with paired bootstrap 95% CIs; RM win-rate vs base; wall time per stage;
  5. one report: report.json (`heldout.<set>.<model>.{n,f1,f1_ci,...}`, `deltas.<set>.<pair>.{f1,ci}`,
     `wall_s`), report.md, PNG plots (F1 by model with CIs, PPO reward and KL curves, wall time); a full run
     also copies them into docs/results/loop/.

Every stage is resumable: out/loop_state.json records the home, the retrain run ids and each finished stage, so
a rerun with the same --out skips what is done (setup, ingest, simulation, each retrain, each evaluation, KL,
win rates); the simulator, `ragqa retrain --resume` and the evaluation's answer journal resume inside a stage.

    python benchmarks/loop.py --quick            # a few minutes: tiny subsets, 2 steps per training stage
    python benchmarks/loop.py --out DIR          # the full run (issue #13's sizes); rerun the same to resume
    python benchmarks/loop.py --base-only        # only the base model's held-out numbers (no simulator/retrain)
    python benchmarks/loop.py --start starter --no-dpo --out DIR   # the same loop from the starter v0002 (what a
                                                 # user's retrain starts from); report in docs/results/loop/from_starter/
    python benchmarks/loop.py ... --docs docs/results/loop/NAME   # a full run's report copied there instead; another
                                                 # run's report already in the folder is kept unless --replace-docs

The data files live in ../shared/data next to the repository (benchmark-only; pass --data to point elsewhere).
Only squad2-dev-half's training articles are trained or tuned on; xquad-en is held-out evaluation only. Results
go to benchmarks/results/loop/<stamp>/ unless --out is given. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.splits import split_articles, subset_squad  # noqa: E402  (the starter uses the same split)

DATA = ROOT.parent / "shared" / "data"  # ../shared/data, relative to the repository root
DOCS = ROOT / "docs" / "results" / "loop"  # where a full run's report is copied
LEDGER = "loop_state.json"
SQUAD2 = "squad2-dev-half/dev-v2.0.json"
XQUAD = "xquad-en/xquad.en.json"


# ---- sizes -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """How much of everything one run does; `retrain` are `ragqa retrain --set` overrides of default.yaml (both
    retrains, PPO and DPO, get them)."""

    sim_limit: int
    correct_fraction: float
    eval_squad2: int  # held-out squad2 questions (answerable and unanswerable) per model
    eval_xquad: int  # held-out xquad-en questions per model
    max_new_tokens: int
    kl_limit: int
    k: int  # passages shown to the model (the app's default is 4)
    retrain: tuple[str, ...] = field(default_factory=tuple)
    sim_batch: int = 8  # questions whose candidates are sampled in one generate
    eval_batch: int = 16  # greedy answers per generate in the evaluation
    # share of unanswerable questions simulated; None = as in the training articles (~1/2 in squad2-dev-half)
    unanswerable_fraction: float | None = None


# --quick: every stage really runs (2 training steps each), on amounts that clear the lowered minimums.
# Both presets show the model k=2 passages: on the shared 2-core CPU every sampled, trained and evaluated token
# costs ~10x the figures measured on an idle machine, and 2 passages roughly halve the ~900-token prompts of k=4.
QUICK = Preset(
    sim_limit=12,
    correct_fraction=0.5,
    eval_squad2=6,
    eval_xquad=6,
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
        "dpo.max_steps=2",
        "dpo.batch_size=1",
        "dpo.grad_accum=2",
        "dpo.gradient_checkpointing=false",
        "merge.check_prompts=1",
        "gate.num_prompts=4",
        "gate.max_new_tokens=32",
    ),
    sim_batch=4,
    eval_batch=4,
)
# The full run at issue #13's size: >= 400 simulated training questions (unanswerables included) x 4 ranked
# candidates, >= 100 corrections (0.3 x 400 = 120, less the few a candidate already matches), >= 400 held-out
# xquad-en and >= 200 held-out squad2 questions per model. Training runs default.yaml's schedule (epochs, not
# step caps): the amounts are what the loop must learn from; answers stay capped at 48 tokens as in evaluation.
FULL = Preset(
    sim_limit=400,
    correct_fraction=0.3,
    eval_squad2=200,
    eval_xquad=400,
    max_new_tokens=48,
    kl_limit=100,
    k=2,
    retrain=(
        "ppo.max_new_tokens=48",
        "gate.max_new_tokens=48",
    ),
)


# ---- data ------------------------------------------------------------------------------------------------------
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


# ---- what a run has finished (resume) ------------------------------------------------------------------------
class Ledger:
    """out/loop_state.json: the home, values to keep (retrain run ids) and each finished stage with its wall time,
    the load after it and what it returned. Saved after every change, so a killed run loses one stage at most."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = (
            json.loads(path.read_text()) if path.is_file() else {"stages": {}, "values": {}}
        )

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.path)

    def done(self, name: str) -> bool:
        return name in self.data["stages"]

    def forget(self, name: str) -> None:
        self.data["stages"].pop(name, None)
        self.save()

    def get(self, key: str, default: Any = None) -> Any:
        return self.data["values"].get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.data["values"][key] = value
        self.save()

    def stage(self, name: str, fn: Any) -> Any:
        """fn()'s result, or the recorded one when an earlier pass finished this stage (then fn is not run)."""
        if self.done(name):
            print(
                f"== {name}: done by an earlier pass ({self.data['stages'][name]['seconds']} s), skipped",
                flush=True,
            )
            return self.data["stages"][name].get("result")
        t0 = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - t0, 1)
        self.data["stages"][name] = {"seconds": seconds, "load": load_average(), "result": result}
        self.save()
        return result

    def walls(self) -> dict[str, float]:
        return {name: st["seconds"] for name, st in self.data["stages"].items()}

    def loads(self) -> dict[str, float]:
        return {name: st["load"] for name, st in self.data["stages"].items()}


# ---- steps as subprocesses -------------------------------------------------------------------------------------
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def run_step(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    log_dir: Path,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run one step, tee its output to log_dir/<name>.log (appended: a resumed step keeps its first log);
    `on_line` sees each line as it comes (to record what a step says before it ends or is killed)."""
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "a") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    print(f"== {name}: exit {rc} (load {load_average()})", flush=True)
    if rc != 0:
        raise SystemExit(f"step {name} failed with exit code {rc}; see {log_dir / (name + '.log')}")


def ragqa(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def simulate_command(train_qa: Path, args: argparse.Namespace) -> list[str]:
    """scripts/simulate_feedback.py on the training articles' questions (unanswerable ones included: the
    simulator scores an abstention 1 there), k=4, questions batched, no progress bar."""
    return [
        sys.executable,
        str(ROOT / "scripts" / "simulate_feedback.py"),
        "--qa",
        str(train_qa),
        "--k-candidates",
        "4",
        "--limit",
        str(args.sim_limit),
        "--correct-fraction",
        str(args.correct_fraction),
        "--seed",
        str(args.seed),
        "--batch-size",
        str(args.sim_batch),
        "--batch",
        *(
            ["--unanswerable-fraction", str(args.unanswerable_fraction)]
            if args.unanswerable_fraction is not None
            else []
        ),
    ]


def retrain_command(
    args: argparse.Namespace,
    algorithm: str = "ppo",
    export_dir: Path | None = None,
    resume: str | None = None,
) -> list[str]:
    """`ragqa retrain --from base` (the raw v0001, whatever is current; `--from starter` with --start starter) with
    the preset's overrides, then the
    user's --retrain-args (which win). DPO: `algorithm=dpo` on the PPO run's export, never published. A resumed
    run keeps its own config (`--resume RUN_ID`, no --set)."""
    extra = ["--no-publish"] if algorithm != "ppo" else []
    if resume:
        return ragqa("retrain", "--resume", resume, *extra)
    sets = [*args.preset.retrain]
    if algorithm != "ppo":
        sets += [f"algorithm={algorithm}", *([f"data.export_dir={export_dir}"] if export_dir else [])]
    flags = [x for s in sets for x in ("--set", s)]
    return ragqa("retrain", "--from", args.start, *flags, *extra, *args.retrain_args.split())


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


def models_to_evaluate(
    home: Path, state: dict[str, Any], not_run: list[str], base: str = "v0001"
) -> tuple[dict[str, str], str]:
    """{"base": the start model, "sft": ..., "final": ...} and how the final model was obtained."""
    from model_store.registry import ModelRegistry

    versions = {"base": base}
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


def dpo_version(home: Path, dpo_state: dict[str, Any], not_run: list[str]) -> str | None:
    """The DPO retrain's merged policy, published unlisted (that retrain never publishes), or None."""
    merged = stage_output(dpo_state, "merge", "merged") if dpo_state else None
    if merged is None:
        not_run.append("DPO model: the DPO retrain merged no policy (not run, skipped or failed)")
        return None
    return publish_unlisted(home, merged, "dpo", "the DPO retrain on the same export, merged")


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


def eval_options(
    qa_file: Path, version: str, limit: int, out_dir: Path, index_dir: Path, args: argparse.Namespace
) -> Any:
    """run_eval's options; batched (`batch_size`) where evaluation.runner has it, and always the same out_dir, so
    a rerun resumes from the evaluation's own answer journal where that exists."""
    from evaluation.runner import EvalOptions

    options = EvalOptions(
        qa_file,
        model=version,
        limit=limit,
        seed=args.seed,
        index_dir=index_dir,
        max_new_tokens=args.max_new_tokens,
        out_dir=out_dir,
        progress=True,
    )
    if hasattr(options, "batch_size"):
        options.batch_size = args.eval_batch
    return options


def save_results(path: Path, results: list[Any]) -> None:
    """Every field of each ExampleResult (passages with their text: KL and RM scoring re-render the prompt)."""
    import dataclasses

    lines = []
    for r in results:
        row = {
            f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name not in ("example", "passages")
        }
        row["qid"] = r.example.qid
        row["passages"] = [p.to_dict() for p in r.passages]
        lines.append(json.dumps(row, ensure_ascii=False))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)  # written whole or not at all: its presence marks the evaluation finished


def load_results(path: Path, qa_file: Path) -> list[Any]:
    from evaluation.formats import load_qa
    from evaluation.runner import ExampleResult
    from retrieval.types import Passage

    examples = {e.qid: e for e in load_qa(qa_file).examples}
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        example = examples[row.pop("qid")]
        passages = [Passage(**p) for p in row.pop("passages")]
        out.append(ExampleResult(example, passages=passages, **row))
    return out


def evaluate_versions(
    sets: dict[str, Path],
    limits: dict[str, int],
    versions: dict[str, str],
    args: argparse.Namespace,
    out: Path,
    embedder: Any,
    ledger: Ledger,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[Any]]]]:
    """metrics[set][label], results[set][label]; an evaluation finished by an earlier pass is read back."""
    from evaluation.runner import run_eval

    metrics: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, list[Any]]] = {}
    for set_name, qa_file in sets.items():
        index_dir = out / "indexes" / set_name
        ledger.stage(f"index {set_name}", lambda q=qa_file, d=index_dir: build_index(q, d, embedder))
        metrics[set_name], results[set_name] = {}, {}
        for label, version in versions.items():
            eval_dir = out / "evals" / f"{set_name}-{label}"
            saved = eval_dir / "loop_results.jsonl"

            def run(
                q: Path = qa_file,
                v: str = version,
                d: Path = eval_dir,
                i: Path = index_dir,
                f: Path = saved,
                n: int = limits[set_name],
            ) -> Any:
                print(f"\n== eval {d.name} ({v})", flush=True)
                ran = run_eval(eval_options(q, v, n, d, i, args), embedder=embedder)
                save_results(f, ran.results)
                return ran.report["metrics"]

            name = f"eval {set_name} {label}"
            if ledger.done(name) and not saved.is_file():
                ledger.forget(name)  # the results file went missing: evaluate again (the journal resumes)
            metrics[set_name][label] = ledger.stage(name, run)
            results[set_name][label] = load_results(saved, qa_file)
    return metrics, results


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


# ---- held-out numbers with confidence intervals --------------------------------------------------------------
# Paired differences reported for each held-out set: (name, model A, model B) for A - B.
PAIRS = (
    ("final_minus_base", "final", "base"),
    ("final_minus_sft", "final", "sft"),
    ("ppo_minus_dpo", "final", "dpo"),
)


def _finite(x: Any) -> Any:
    """NaN (no values) as null: report.json stays valid JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def f1_by_qid(results: list[Any]) -> dict[str, float]:
    """Per-question token F1 of the answered questions (an error is not an answer and is left out)."""
    return {
        r.example.qid: float(r.scores["f1"])
        for r in results
        if r.error is None and r.scores.get("f1") is not None
    }


def heldout_table(
    metrics: dict[str, dict[str, Any]], results: dict[str, dict[str, list[Any]]], kls: dict[str, Any]
) -> dict[str, dict[str, dict[str, Any]]]:
    """heldout[set][model]: n, F1 with its bootstrap 95% CI, EM, contains-gold, abstention P/R, words, KL."""
    from evaluation.metrics import bootstrap_mean_ci

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for set_name, by_label in results.items():
        out[set_name] = {}
        for label, rs in by_label.items():
            ci = bootstrap_mean_ci(list(f1_by_qid(rs).values()))
            answers = metrics[set_name][label].get("answers", {})
            kl = kls.get(label) or {}
            out[set_name][label] = {
                "n": ci["n"],
                "f1": _finite(ci["mean"]),
                "f1_ci": _finite(ci["ci"]),
                "em": answers.get("em"),
                "contains_gold": answers.get("contains_gold_rate"),
                "abstention_precision": answers.get("abstention_precision"),
                "abstention_recall": answers.get("abstention_recall"),
                "abstention_rate": answers.get("abstention_rate"),
                "words": answers.get("mean_answer_words"),
                "kl_vs_base_per_answer": (kl.get("vs_base") or {}).get("kl_per_answer"),
                "kl_vs_base_per_token": (kl.get("vs_base") or {}).get("kl_per_token"),
                "kl_vs_sft_per_answer": (kl.get("vs_sft") or {}).get("kl_per_answer"),
            }
    return out


def deltas_table(results: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """deltas[set][pair]: mean F1 of A - B over the questions both answered, with its paired bootstrap 95% CI."""
    from evaluation.metrics import paired_bootstrap_ci

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for set_name, by_label in results.items():
        out[set_name] = {}
        for name, a, b in PAIRS:
            if a not in by_label or b not in by_label:
                continue
            fa, fb = f1_by_qid(by_label[a]), f1_by_qid(by_label[b])
            shared = [q for q in fa if q in fb]
            d = paired_bootstrap_ci([fa[q] for q in shared], [fb[q] for q in shared])
            out[set_name][name] = {
                "n": d["n"],
                "f1": _finite(d["diff"]),
                "ci": _finite(d["ci"]),
                f"f1_{a}": _finite(d["mean_a"]),
                f"f1_{b}": _finite(d["mean_b"]),
            }
    return out


def kl_answers(results: dict[str, dict[str, list[Any]]], label: str, limit: int) -> list[Any]:
    """Up to `limit` of the model's answers, alternating between the held-out sets (both kinds of question)."""
    import itertools

    per_set = [rs[label] for rs in results.values() if label in rs]
    mixed = [r for group in itertools.zip_longest(*per_set) for r in group if r is not None]
    return [r for r in mixed if r.error is None and r.answer][:limit]


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
    ("gated by the relevance gate", "answers", "relevance_gated_rate"),
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
    """Mean F1 per model and held-out set, with its bootstrap 95% CI as error bars."""
    heldout = report["heldout"]
    sets = list(heldout)
    labels = list(next(iter(heldout.values())))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        xs = [j + i * width for j in range(len(sets))]
        rows = [heldout[s].get(label, {}) for s in sets]
        ys = [r.get("f1") or 0.0 for r in rows]
        ci = [r.get("f1_ci") or [y, y] for r, y in zip(rows, ys, strict=True)]
        err = [
            [max(0.0, y - (c[0] if c[0] is not None else y)) for y, c in zip(ys, ci, strict=True)],
            [max(0.0, (c[1] if c[1] is not None else y) - y) for y, c in zip(ys, ci, strict=True)],
        ]
        bars = ax.bar(xs, ys, width, yerr=err, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(sets))], sets)
    ax.set_ylabel("token F1 (95% CI)")
    ax.set_title("held-out F1 by model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_ppo(ppo: list[dict[str, float]], path: Path, plt: Any) -> str | None:
    """Two panels: the reward model's score and the KL to the reference per PPO step, on the rollouts and (where
    the run scored them for its policy selection) on the held-out prompts."""
    if not ppo:
        return None
    steps = [m["step"] for m in ppo]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in zip(
        axes, ("score", "kl"), ("PPO reward (RM score)", "PPO KL to reference"), strict=True
    ):
        ax.plot(steps, [m.get(key, float("nan")) for m in ppo], marker="o", markersize=3, label="rollouts")
        held = [
            (m["step"], m[f"heldout_{'reward' if key == 'score' else key}"]) for m in ppo if "heldout_kl" in m
        ]
        if held:
            ax.plot(*zip(*held, strict=True), marker="s", markersize=4, label="held-out prompts")
            ax.legend(fontsize=7)
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
    size = "quick" if report["quick"] else "full" if report.get("full_size", True) else "reduced"
    start = "the starter (`--start starter`)" if s.get("start") == "starter" else "the raw v0001"
    md = [f"# Feedback loop: before / after ({size} run)", ""]
    md += [
        f'- Started from {start}: "base" below is that model.',
        f"- Started {report['started_at']}, total wall time {fmt(report['wall_s'].get('total'), 0)} s; "
        f"machine: {describe_machine(report['machine'])}.",
        f"- Load average (1 min) at start {report['load']['start']}, after each step: "
        + ", ".join(f"{k} {v}" for k, v in report["load"].items() if k != "start")
        + " (2 cores shared with other work: timings are inflated by the load).",
        f"- Training articles ({len(report['split']['train'])}): {', '.join(report['split']['train'])}.",
        f"- Held-out articles ({len(report['split']['heldout'])}): {', '.join(report['split']['heldout'])}.",
        f"- xquad-en minus {report['split']['xquad_removed']} contexts shared with squad2-dev-half.",
        f"- Sizes: {s['sim_limit']} simulated questions (4 candidates each, correct fraction "
        f"{s['correct_fraction']}), {s.get('k', 4)} passages shown to the model, "
        f"{s['eval_squad2']} held-out squad2 and {s['eval_xquad']} xquad questions per model (at most), "
        f"answers capped at {s['max_new_tokens']} "
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
    md += heldout_md(report)
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


def _ci(ci: Any) -> str:
    from evaluation.reports import fmt

    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and None not in ci else "-"


def heldout_md(report: dict[str, Any]) -> list[str]:
    """The summary tables: per model with the F1 CI, and the paired differences with theirs."""
    from evaluation.reports import fmt, md_table

    md: list[str] = []
    keys = (
        "em",
        "contains_gold",
        "abstention_precision",
        "abstention_recall",
        "words",
        "kl_vs_base_per_answer",
    )
    for set_name, by_label in (report.get("heldout") or {}).items():
        rows = [
            (label, r["n"], fmt(r["f1"]), _ci(r["f1_ci"]), *(fmt(r.get(k)) for k in keys))
            for label, r in by_label.items()
        ]
        head = [
            "model",
            "n",
            "F1",
            "F1 95% CI",
            "EM",
            "contains gold",
            "abst. precision",
            "abst. recall",
            "words",
            "KL vs base (nats/answer)",
        ]
        md += [f"## {set_name}: summary", "", md_table(head, rows), ""]
        deltas = (report.get("deltas") or {}).get(set_name) or {}
        if deltas:
            drows = [(name, d["n"], fmt(d["f1"]), _ci(d["ci"])) for name, d in deltas.items()]
            md += [md_table(["paired difference", "n", "F1", "95% CI (paired bootstrap)"], drows), ""]
    return md


def retrain_key_metrics(state: dict[str, Any]) -> dict[str, Any]:
    """The few retrain numbers the loop report shows (data counts, losses, RM accuracy, PPO, gate)."""
    keep = {
        "export": ("demonstrations_train", "pairs_train", "prompts_train", "prompts_test"),
        "sft": ("steps", "train_loss", "eval_loss"),
        "rm": ("pairs_used", "pairs_dropped_too_long", "steps", "train_loss", "heldout_accuracy"),
        "ppo": (
            "steps",
            "score_first",
            "score_last",
            "kl_last",
            "response_length_last",
            "seconds_per_step",
            "rollout_seconds",
            "update_seconds",
            "selected_step",
            "selected_heldout_reward",
            "selected_heldout_kl",
            "last_heldout_reward",
            "last_heldout_kl",
            "selection_kept_start",
        ),
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
    p.add_argument("--out", type=Path, default=None, help="results folder; rerun with the same one to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--start",
        choices=["base", "starter"],
        default="base",
        help="the model the loop starts from and compares with: the raw v0001 (issue #13's experiment) or the "
        "starter (what a user's retrain starts from); a starter run's report goes to docs/results/loop/from_starter/",
    )
    p.add_argument("--heldout-articles", type=int, default=4)
    p.add_argument("--sim-limit", type=int, default=None, help="training questions to simulate")
    p.add_argument("--correct-fraction", type=float, default=None)
    p.add_argument(
        "--unanswerable-fraction", type=float, default=None, help="share of unanswerable questions simulated"
    )
    p.add_argument("--eval-limit", type=int, default=None, help="questions per held-out set (both sets)")
    p.add_argument("--eval-squad2", type=int, default=None, help="held-out squad2 questions per model")
    p.add_argument("--eval-xquad", type=int, default=None, help="held-out xquad-en questions per model")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer cap (simulation and evaluation)")
    p.add_argument("--kl-limit", type=int, default=None, help="answers the KL is averaged over")
    p.add_argument("--k", type=int, default=None, help="passages shown to the model (preset: 2)")
    p.add_argument("--sim-batch", type=int, default=None, help="questions sampled per generate (simulation)")
    p.add_argument("--eval-batch", type=int, default=None, help="answers per generate (evaluation)")
    p.add_argument("--no-dpo", action="store_true", help="skip the second (DPO) retrain and its evaluation")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="reuse --home from an earlier loop run: skip setup, simulation and retrain, evaluate again "
        "(into a new --out: the same one would skip the evaluations it finished)",
    )
    p.add_argument("--retrain-args", default="", help="extra arguments for `ragqa retrain` (quoted)")
    p.add_argument(
        "--docs",
        type=Path,
        default=None,
        help="where a full-size run copies its report (default: docs/results/loop/, from_starter/ for --start starter)",
    )
    p.add_argument(
        "--replace-docs", action="store_true", help="replace another run's report already in the docs folder"
    )
    args = p.parse_args(argv)
    args.preset = QUICK if args.quick else FULL
    if args.eval_limit is not None:
        args.eval_squad2 = args.eval_squad2 or args.eval_limit
        args.eval_xquad = args.eval_xquad or args.eval_limit
    for name in (
        "sim_limit",
        "correct_fraction",
        "eval_squad2",
        "eval_xquad",
        "max_new_tokens",
        "kl_limit",
        "k",
        "sim_batch",
        "eval_batch",
        "unanswerable_fraction",
    ):
        if getattr(args, name) is None:
            setattr(args, name, getattr(args.preset, name))
    return args


def prepare_home(args: argparse.Namespace, ledger: Ledger) -> Path:
    """The run's RAGQA_HOME: the one an earlier pass of this --out made (resume), or a fresh one whose
    config.yaml caps answers (simulated candidates and evaluation alike)."""
    known = ledger.get("home")
    if known and not args.eval_only:
        if args.home and Path(args.home).resolve() != Path(known):
            raise SystemExit(f"{ledger.path} belongs to a run in {known}; pass that --home or another --out")
        return Path(known)
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
    ledger.put("home", str(home))
    return home


def check_start(args: argparse.Namespace, ledger: Ledger, home: Path) -> None:
    """A rerun (or --eval-only) must start from the model the first pass started from: else its report would
    call the wrong model "base". A ledger that does not say (older code) is told by the home: a run from the raw
    model set the home up without the starter."""

    def home_start() -> str:
        return "base" if starter_version(home) is None else "starter"

    if args.eval_only:
        if home_start() != args.start:
            raise SystemExit(f"{home} was a run from the {home_start()} model: pass --start {home_start()}")
        return
    known = ledger.get("start") or (home_start() if ledger.done("setup") else None)
    if known is not None and known != args.start:
        raise SystemExit(
            f"{ledger.path} is a run that started from {known}: rerun it with --start {known}, or give another --out"
        )
    ledger.put("start", args.start)


def setup_flags(start: str) -> list[str]:
    """`ragqa setup` without the demo guide; without the starter too when the loop starts from the raw model (the
    simulated candidates then come from v0001, and the gain is the loop's own)."""
    return ["--no-demo", *(["--no-starter"] if start == "base" else [])]


def starter_version(home: Path) -> str | None:
    """The starter `ragqa setup` published in this home, or None (a home set up for the raw model)."""
    from model_store.registry import ModelRegistry
    from model_store.starter import STARTER_KIND

    registry = ModelRegistry(home / "models")
    return next((v.name for v in registry.versions() if v.manifest.get("kind") == STARTER_KIND), None)


def start_version(home: Path, start: str) -> str:
    """The model the loop starts from and is measured against: v0001, or the starter `ragqa setup` published."""
    if start == "base":
        return "v0001"
    found = starter_version(home)
    if found is None:
        raise SystemExit(
            f"--start starter: `ragqa setup` published no starter in {home} (see logs/setup.log)"
        )
    return found


def retrain(
    kind: str,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    home: Path,
    ledger: Ledger,
    not_run: list[str],
    export_dir: Path | None = None,
) -> dict[str, Any]:
    """One retrain (kind "ppo" or "dpo") as a resumable stage; returns its state.json (empty when none).

    The run id is recorded as soon as the run exists, so a rerun continues it with `--resume` (the trainers
    continue from their checkpoints); a failed retrain is reported and its leftovers are still evaluated.
    """
    key = f"retrain run {kind}"

    def run() -> str:
        known = ledger.get(key)
        if known and _run_status(home / "runs" / known) == "finished":
            return known  # it finished, the loop was stopped before recording it: --resume would refuse
        cmd = retrain_command(args, kind, export_dir, resume=known)

        def record_run_id(line: str) -> None:  # recorded when the run starts: a kill must not lose it
            started = RUN_STARTED.match(line)
            if started and ledger.get(key) != started.group(1):
                ledger.put(key, started.group(1))

        run_step(f"retrain-{kind}", cmd, env, logs, on_line=record_run_id)
        return ledger.get(key)

    try:
        ledger.stage(f"retrain {kind}", run)
    except SystemExit as e:  # evaluate what the run left (SFT model, candidate); the report says it failed
        not_run.append(f"retrain {kind} FAILED: {e}")
    run_id = ledger.get(key)
    state_file = home / "runs" / run_id / "state.json" if run_id else None
    return json.loads(state_file.read_text()) if state_file and state_file.is_file() else {}


# The retrain's first line (training/pipeline.py's `_run_stages`; tests/training/test_pipeline.py holds them to it).
RUN_STARTED = re.compile(r"^(?:starting|resuming) retrain run (\S+) ")


def _run_status(run_dir: Path) -> str | None:
    state = run_dir / "state.json"
    return json.loads(state.read_text()).get("status") if state.is_file() else None


def simulation_line(logs: Path) -> str | None:
    log = logs / "simulate.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    return next((ln for ln in reversed(lines) if ln.startswith("simulated")), None)


def kl_stages(
    results: dict[str, dict[str, list[Any]]],
    versions: dict[str, str],
    home: Path,
    args: argparse.Namespace,
    ledger: Ledger,
) -> dict[str, dict[str, Any]]:
    """KL of each trained model from the base, and of the final and DPO models from SFT, over its own answers."""
    from model_store.registry import ModelRegistry

    reg = ModelRegistry(home / "models")
    kls: dict[str, dict[str, Any]] = {}
    for label in (lb for lb in versions if lb != "base"):
        answers = kl_answers(results, label, args.kl_limit)
        path = reg.get(versions[label]).path
        kls[label] = {
            "vs_base": ledger.stage(
                f"kl {label} vs base",
                lambda p=path, a=answers: answer_kl(p, reg.get(versions["base"]).path, a, args.kl_limit),
            )
        }
        if label != "sft" and "sft" in versions:
            kls[label]["vs_sft"] = ledger.stage(
                f"kl {label} vs sft",
                lambda p=path, a=answers: answer_kl(p, reg.get(versions["sft"]).path, a, args.kl_limit),
            )
    return kls


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    out = (args.out or ROOT / "benchmarks" / "results" / "loop" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / LEDGER)
    run_started = run_started_at(ledger, started)
    home = prepare_home(args, ledger)
    check_start(args, ledger, home)
    os.environ["RAGQA_HOME"] = str(home)  # in-process evaluation reads the same home as the subprocesses
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = out / "logs"
    start_load = load_average()
    not_run: list[str] = []
    print(f"loop: RAGQA_HOME={home}, results in {out}, load {start_load}", flush=True)

    squad = json.loads((args.data / SQUAD2).read_text())
    train_titles, heldout_titles = split_articles(squad, args.heldout_articles, args.seed)
    data_dir = out / "data"
    train_qa = write_json(data_dir / "train.json", subset_squad(squad, train_titles))
    heldout_qa = write_json(data_dir / "squad2_heldout.json", subset_squad(squad, heldout_titles))
    xq, removed = xquad_minus(json.loads((args.data / XQUAD).read_text()), squad)
    xquad_qa = write_json(data_dir / "xquad_minus_squad2.json", xq)

    if not args.eval_only:
        ledger.stage("setup", lambda: run_step("setup", ragqa("setup", *setup_flags(args.start)), env, logs))
    state: dict[str, Any] = {}
    dpo_state: dict[str, Any] = {}
    base = start_version(home, args.start)
    versions = {"base": base}
    final_how = None
    if args.base_only:
        not_run.append("simulate + retrain (--base-only)")
    elif args.eval_only:
        run_dir = latest_run(home)
        assert run_dir is not None
        state = json.loads((run_dir / "state.json").read_text())
        not_run.append(
            f"setup, simulate, retrain: --eval-only reused {run_dir} (their times are the first pass's)"
        )
        versions, final_how = models_to_evaluate(home, state, not_run, base)
    else:
        from evaluation.formats import load_qa
        from evaluation.runner import write_corpus

        corpus = data_dir / "train_corpus"

        def ingest() -> None:
            # every training article's contexts: the simulator's corpus
            write_corpus(load_qa(train_qa), corpus)
            run_step("ingest", ragqa("ingest", str(corpus)), env, logs)

        ledger.stage("ingest", ingest)
        # The simulator skips the questions it recorded before: a rerun of a killed simulation continues it.
        ledger.stage("simulate", lambda: run_step("simulate", simulate_command(train_qa, args), env, logs))
        state = retrain("ppo", args, env, logs, home, ledger, not_run)
        versions, final_how = models_to_evaluate(home, state, not_run, base)

    from retrieval.embedder import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    sets = {"squad2_heldout": heldout_qa, "xquad_minus_squad2": xquad_qa}
    limits = {"squad2_heldout": args.eval_squad2, "xquad_minus_squad2": args.eval_xquad}
    # base, SFT and final first: their numbers do not wait for (or depend on) the DPO retrain
    metrics, results = evaluate_versions(sets, limits, versions, args, out, embedder, ledger)
    if not (args.base_only or args.eval_only):
        export = stage_output(state, "export", "export")
        if args.no_dpo:
            not_run.append("DPO retrain (--no-dpo)")
        elif export is None:
            not_run.append("DPO retrain: the PPO retrain left no export to train on")
        else:
            dpo_state = retrain("dpo", args, env, logs, home, ledger, not_run, export_dir=export)
            dpo = dpo_version(home, dpo_state, not_run)
            if dpo:
                versions["dpo"] = dpo
                metrics, results = evaluate_versions(sets, limits, versions, args, out, embedder, ledger)

    rm_dir = stage_output(state, "rm", "merged") if state else None
    # keyed by the models scored: a later pass that adds the DPO model scores them again
    wins = ledger.stage(f"rm win-rate scoring ({', '.join(versions)})", lambda: rm_win_rates(results, rm_dir))
    kls = kl_stages(results, versions, home, args, ledger)
    wall = ledger.walls()
    wall["total"] = round(sum(wall.values()), 1)  # every stage, whichever pass ran it
    wall["total (this pass)"] = round(time.perf_counter() - t_start, 1)
    for name, st in ((f"retrain {k}", s) for k, s in (("ppo", state), ("dpo", dpo_state))):
        for row in stage_table(st) if st else []:
            if row["seconds"] is not None:
                wall[f"{name}: {row['stage']}"] = row["seconds"]
    run_dir = (
        latest_run(home)
        if args.eval_only
        else (home / "runs" / ledger.get("retrain run ppo") if ledger.get("retrain run ppo") else None)
    )
    report = {
        "quick": args.quick,
        "started_at": started,
        "run_started_at": run_started,
        "machine": machine_record(),
        "home": str(home),
        "seed": args.seed,
        "split": {"train": train_titles, "heldout": heldout_titles, "xquad_removed": removed},
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("data", "home", "out", "preset")},
            "retrain": [*args.preset.retrain, *args.retrain_args.split()],
        },
        "simulation": simulation_line(logs),
        "versions": versions,
        "final_how": final_how,
        "retrain_run": str(run_dir) if run_dir else None,
        "retrain_dpo_run": ledger.get("retrain run dpo"),
        "retrain_stages": stage_table(state) if state else [],
        "retrain_dpo_stages": stage_table(dpo_state) if dpo_state else [],
        "retrain_metrics": retrain_key_metrics(state) if state else {},
        "retrain_dpo_metrics": retrain_key_metrics(dpo_state) if dpo_state else {},
        "heldout": heldout_table(metrics, results, kls),
        "deltas": deltas_table(results),
        "metrics": metrics,
        "rm_win_rate": wins,
        "kl_vs_base": {label: kl.get("vs_base") for label, kl in kls.items()},
        "kl_vs_sft": {label: kl["vs_sft"] for label, kl in kls.items() if "vs_sft" in kl},
        "ppo_steps": read_ppo_metrics(run_dir),
        "wall_s": wall,
        "load": {"start": start_load, **ledger.loads(), "end": load_average()},
        "not_run": not_run,
        "full_size": full_size(args),
    }
    write_report(report, out)
    if not args.quick and not args.base_only and report["full_size"]:
        publish_docs(out, args.docs or docs_folder(args.start), replace=args.replace_docs)
    elif not args.quick:
        print(
            f"a run smaller than the full preset: its report stays in {out} (docs/results/loop/ is for full runs)"
        )
    return 0


def machine_record() -> dict[str, Any]:
    """The CPU (model and the flags that pick dtypes and kernels), its cores and torch's threads: the timings'
    context (the CPU changes between machines)."""
    from model_store.hardware import read_cpuinfo, usable_cores

    cpu = read_cpuinfo()
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    return {
        "cpu": cpu.model,
        "flags": cpu.relevant_flags,
        "cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": threads,
    }


def describe_machine(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']} ({' '.join(machine['flags']) or 'no flags read'}), {machine['usable_cores']} usable "
        f"cores, torch threads {machine['torch_threads']}"
    )


def full_size(args: argparse.Namespace) -> bool:
    """At least issue #13's sizes (the FULL preset) everywhere, DPO included: only such a run replaces the report in
    docs/results/loop/ (a smaller run, e.g. to try a setting, must not overwrite it)."""
    sizes = ("sim_limit", "eval_squad2", "eval_xquad", "kl_limit")
    # DPO is part of the raw-model experiment (PPO - DPO); a loop from the starter asks only whether it improves
    # the model a user's retrain starts from
    dpo_done = not args.no_dpo or args.start == "starter"
    return dpo_done and all(getattr(args, name) >= getattr(FULL, name) for name in sizes)


def docs_folder(start: str) -> Path:
    """docs/results/loop/ for the raw-model experiment; a loop from the starter is another experiment."""
    return DOCS if start == "base" else DOCS / "from_starter"


def run_started_at(ledger: Ledger, now: str) -> str:
    """When this run's first pass started: recorded by that pass, returned unchanged to the passes that resume it
    (the name `same_run` matches reports by)."""
    if ledger.get("run_started_at") is None:
        ledger.put("run_started_at", now)
    return ledger.get("run_started_at")


def same_run(a: Path, b: Path) -> bool:
    """Whether two report.json files come from one run (its RAGQA_HOME and the start of its FIRST pass, which the
    ledger keeps for the passes that resume it): a resumed run's report replaces its own earlier copy, never another
    run's. Reports written before `run_started_at` existed never match."""
    try:
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    except (OSError, ValueError):
        return False
    first = ra.get("run_started_at")
    return first is not None and (ra.get("home"), first) == (rb.get("home"), rb.get("run_started_at"))


def publish_docs(out: Path, docs: Path, replace: bool = False) -> bool:
    """A full run's report.json, report.md and plots into `docs` (docs/results/loop/... by default: the issue's
    results folder). A report of ANOTHER run already there is kept (the README quotes it) unless `replace`: the
    new one stays in `out`, and the message says how to publish it. True when copied."""
    if docs.resolve() == out.resolve():  # --docs names the run's own folder: the report is there already
        return True
    existing = docs / "report.json"
    if existing.is_file() and not replace and not same_run(existing, out / "report.json"):
        print(
            f"{docs} holds another run's report, kept: this run's report stays in {out} "
            "(rerun with the same --out and --docs DIR to copy it elsewhere, or --replace-docs to replace it)"
        )
        return False
    docs.mkdir(parents=True, exist_ok=True)
    for f in [out / "report.json", out / "report.md", *out.glob("*.png")]:
        shutil.copy2(f, docs / f.name)
    print(f"copied the report into {docs}")
    return True


if __name__ == "__main__":
    sys.exit(main())
