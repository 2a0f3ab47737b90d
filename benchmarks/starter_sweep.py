"""Which starter recipe answers best? Train variants of the starter side by side and score each on validation questions.

The variants differ in the data (how many unanswerable rows per answered one; one or two showings of each question's
passages, see evaluation/starter_data.passage_views) and in the LoRA/SFT settings. Each is trained with
`scripts/train_starter.py train` (the retrain's SFT stage), in parallel processes (one GPU holds all four: the
135M model leaves it mostly idle), and scored on the same validation rows: the questions of the training articles
that training/starter.split_rows holds back from every variant, in SQuAD 2.0's natural mix (about half unanswerable,
plus off-topic showings), answered greedily through the app's transformers backend exactly as the app prompts.
The held-out evaluation sets (xquad-en, the 4 held-out squad2 articles) are not read: the choice is made on training
articles only, and the chosen adapter is then measured on the held-out sets by benchmarks/starter_heldout.py.

    python scripts/train_starter.py build --squad dev-v2.0.json --out rows/v2.jsonl --views 2
    python benchmarks/starter_sweep.py derive --rows rows/v2.all.jsonl --out sweep-data
    python benchmarks/starter_sweep.py run --model var/models/v0001 --data sweep-data --out sweep-out
    python benchmarks/starter_sweep.py guide views2=sweep-out/views2/adapter ... --out guide-out

`run` writes OUT/<variant>/adapter/ (the adapter and its card), OUT/<variant>/dev.json (each answer and the
metrics) and OUT/sweep.json (the table, the device, the time per variant); it prints the table. `guide` asks each
adapter the user-guide questions of the slow starter test (evaluation/guide_questions.py) and writes OUT/guide.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.starter_data import write_rows  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    views: int  # showings per question kept in the data (1: the app's own order only)
    per_answer: float  # unanswerable rows per answered row
    overrides: tuple[str, ...] = field(default_factory=tuple)  # on top of training/starter.STARTER_SETTINGS


# Overrides on top of training/starter.STARTER_SETTINGS (r 16, batch 32, lr 3e-4: the views2 recipe, shipped since
# this sweep chose it); `previous` is the first shipped starter's recipe (r 8, batch 16, lr 2e-4, one showing).
_FIRST = ("lora.r=8", "lora.alpha=16", "sft.batch_size=16", "sft.grad_accum=1", "sft.lr=2e-4")
VARIANTS = (
    Variant("previous", views=1, per_answer=0.2, overrides=_FIRST),
    Variant("fewer_abstain", views=1, per_answer=0.1, overrides=_FIRST),
    Variant("views2", views=2, per_answer=0.2),
    Variant("views2_fewer_abstain", views=2, per_answer=0.1),
)


# ---- data ------------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def variant_rows(rows: list[dict[str, Any]], variant: Variant, seed: int) -> list[dict[str, Any]]:
    """The rows one variant trains on (its views, balanced to its share of unanswerables); the split is applied later."""
    from evaluation.starter_data import balance

    kept = [r for r in rows if r["meta"].get("view", 0) < variant.views]
    return balance(kept, seed, variant.per_answer)


def dev_rows(rows: list[dict[str, Any]], test_fraction: float) -> list[dict[str, Any]]:
    """The validation rows: first showings of the questions split_rows holds back, unbalanced (the natural mix)."""
    from training.starter import is_test_qid

    return [r for r in rows if r["meta"].get("view", 0) == 0 and is_test_qid(r["meta"]["qid"], test_fraction)]


def derive(rows_path: Path, out: Path, seed: int, test_fraction: float) -> dict[str, Any]:
    """Write each variant's rows (with a summary the adapter card carries) and the validation rows."""
    rows = read_jsonl(rows_path)
    summary_path = rows_path.with_name(rows_path.name.replace(".all.jsonl", ".summary.json"))
    built = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, Any] = {}
    for variant in VARIANTS:
        chosen = variant_rows(rows, variant, seed)
        write_rows(out / f"{variant.name}.jsonl", chosen)
        summary = {
            **built,
            "rows": len(chosen),
            "kinds": dict(Counter(r["meta"]["kind"] for r in chosen)),
            "views": variant.views,
            "unanswerable_per_answer": variant.per_answer,
        }
        (out / f"{variant.name}.summary.json").write_text(
            json.dumps(summary, indent=1) + "\n", encoding="utf-8"
        )
        counts[variant.name] = summary["kinds"]
    dev = dev_rows(rows, test_fraction)
    write_rows(out / "dev.jsonl", dev)
    counts["dev"] = dict(Counter(r["meta"]["kind"] for r in dev))
    return counts


# ---- scoring ---------------------------------------------------------------------------------------------------
def score_answers(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """SQuAD 2.0 scoring of answers to validation rows: unanswerable and off-topic rows are right iff abstained."""
    from evaluation.metrics import abstention_scores, answer_words, is_abstention, mean, score_answer

    scored = []
    for row, answer in zip(rows, answers, strict=True):
        meta = row["meta"]
        unanswerable = meta["kind"] != "answer" or not meta.get("answers")
        # a retrieval miss shows passages without the gold: the right answer is the abstention, as in training
        scored.append(
            {
                **score_answer(answer, [] if unanswerable else meta["answers"], unanswerable),
                "kind": meta["kind"],
            }
        )
    answerable = [s for s in scored if s["kind"] == "answer"]
    abst = abstention_scores([bool(s["abstained"]) for s in scored], [s["kind"] != "answer" for s in scored])
    return {
        "n": len(scored),
        "kinds": dict(Counter(s["kind"] for s in scored)),
        "f1": mean(float(s["f1"]) for s in scored),
        "em": mean(float(s["em"]) for s in scored),
        "f1_answerable": mean(float(s["f1"]) for s in answerable),
        "answerable_abstained": mean(float(bool(s["abstained"])) for s in answerable),
        "abstention_precision": abst["abstention_precision"],
        "abstention_recall": abst["abstention_recall"],
        "mean_answer_words": mean(answer_words(a) for a in answers if not is_abstention(a)),
    }


def generate_answers(
    model_dir: Path, adapter: Path | None, rows: list[dict[str, Any]], batch: int
) -> list[str]:
    """Greedy answers through the app's transformers backend (its prompt codec, decoding and settings)."""
    import torch

    from app.backends.transformers_lm import TransformersModel
    from app.config import AppConfig
    from model_store.loading import load_causal_lm, load_tokenizer, pick_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(model_dir, dtype=pick_dtype("auto"), device=device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    version = SimpleNamespace(name=adapter.parent.name if adapter else "base", path=model_dir, manifest={})
    served = TransformersModel(version, model, load_tokenizer(model_dir))
    cfg = AppConfig()
    prompts = [r["prompt"] for r in rows]
    answers: list[str] = []
    for i in range(0, len(prompts), batch):
        out = served.generate_batch(
            prompts[i : i + batch], max_new_tokens=64, repetition_penalty=cfg.repetition_penalty
        )
        answers += [g.text for g in out]
    return answers


# ---- run -------------------------------------------------------------------------------------------------------
def train_command(model: Path, data: Path, out: Path, variant: Variant) -> list[str]:
    sets = [a for o in ("progress=false", *variant.overrides) for a in ("--set", o)]
    return [
        sys.executable, str(ROOT / "scripts" / "train_starter.py"), "train",
        "--data", str(data / f"{variant.name}.jsonl"), "--model", str(model), "--out", str(out / variant.name), *sets,
    ]  # fmt: skip


def train_all(model: Path, data: Path, out: Path, variants: list[Variant], threads: int) -> dict[str, Any]:
    """Every variant trained at once, one process each; returns each one's exit status and seconds."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
    procs = {}
    for v in variants:
        (out / v.name).mkdir(parents=True, exist_ok=True)
        log = (out / v.name / "train.log").open("w", encoding="utf-8")
        procs[v.name] = (subprocess.Popen(train_command(model, data, out, v), stdout=log, stderr=subprocess.STDOUT, env=env), time.time(), log)  # fmt: skip
    done: dict[str, Any] = {}
    while len(done) < len(procs):
        for name, (proc, t0, log) in procs.items():
            if name not in done and proc.poll() is not None:
                log.close()
                done[name] = {"returncode": proc.returncode, "train_s": round(time.time() - t0, 1)}
                print(f"{name}: trained, exit {proc.returncode}, {done[name]['train_s']} s", flush=True)
        time.sleep(2)
    return done


def machine_now() -> dict[str, Any]:
    """The CPU (model, flags, cores) and the load average at the start: the context of the times recorded."""
    from benchmarks.loop import machine_record

    return {**machine_record(), "load_average": os.getloadavg()}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    from model_store.hardware import read_cpuinfo

    return read_cpuinfo().model


def run(
    model: Path, data: Path, out: Path, names: list[str], batch: int, threads: int, base: bool
) -> dict[str, Any]:
    variants = [v for v in VARIANTS if v.name in names]
    out.mkdir(parents=True, exist_ok=True)
    dev = read_jsonl(data / "dev.jsonl")
    machine = machine_now()
    trained = train_all(model, data, out, variants, threads)
    results: dict[str, Any] = {}
    targets = ([("base", None)] if base else []) + [(v.name, out / v.name / "adapter") for v in variants]
    for name, adapter in targets:
        if adapter is not None and trained[name]["returncode"] != 0:
            results[name] = {
                "error": f"training failed (exit {trained[name]['returncode']}): see {name}/train.log"
            }
            continue
        t0 = time.time()
        answers = generate_answers(model, adapter, dev, batch)
        metrics = {
            **score_answers(dev, answers),
            "score_s": round(time.time() - t0, 1),
            **trained.get(name, {}),
        }
        (out / name).mkdir(parents=True, exist_ok=True)
        rows = [{"qid": r["meta"]["qid"], "kind": r["meta"]["kind"], "answer": a} for r, a in zip(dev, answers, strict=True)]  # fmt: skip
        (out / name / "dev.json").write_text(
            json.dumps({"metrics": metrics, "answers": rows}, indent=1) + "\n"
        )
        results[name] = metrics
        print(table_row(name, metrics), flush=True)
    report = {
        "device": device_name(),
        "machine": {**machine, "load_average_after": os.getloadavg()},
        "dev": {"n": len(dev), "kinds": dict(Counter(r["meta"]["kind"] for r in dev))},
        "variants": {
            v.name: {"views": v.views, "per_answer": v.per_answer, "overrides": list(v.overrides)}
            for v in variants
        },  # fmt: skip
        "results": results,
    }
    (out / "sweep.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


# ---- guide -----------------------------------------------------------------------------------------------------
def guide(adapters: dict[str, Path], out: Path) -> dict[str, Any]:
    """Each adapter published on v0001 in its own home (the demo guide indexed, as `ragqa setup` leaves it), then
    the guide questions of evaluation/guide_questions.py asked through the app's ask path, as served: the relevance
    gate included, which answers the off-topic questions before any adapter is asked (set RAGQA_HOME's config
    `min_relevance: off` to compare the adapters' own abstention there)."""
    import shutil

    from app.cli import main as cli

    machine = machine_now()
    base_home = out / "home-base"
    os.environ["RAGQA_HOME"] = str(base_home)
    if not (base_home / "models" / "current").exists() and cli(["setup", "--no-starter"]) != 0:
        raise SystemExit("ragqa setup failed")
    results = {}
    for name, adapter in adapters.items():
        home = out / f"home-{name}"
        if not home.exists():  # v0001 and the index shared by hard links; each home publishes its own starter
            shutil.copytree(base_home, home, copy_function=os.link, symlinks=True)
        results[name] = ask_guide(home, adapter)
        print(f"{name}: {results[name]['score']}", flush=True)
    report = {"machine": {**machine, "load_average_after": os.getloadavg()}, "results": results}
    (out / "guide.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return results


def ask_guide(home: Path, adapter: Path) -> dict[str, Any]:
    from app.config import AppConfig
    from app.qa import QAService
    from evaluation.guide_questions import GUIDE_QUESTIONS, OFF_TOPIC, score_guide
    from model_store.gguf import gguf_extras
    from model_store.registry import ModelRegistry
    from training.starter import publish_starter

    os.environ["RAGQA_HOME"] = str(home)
    registry = ModelRegistry(home / "models")
    fill_base(adapter, registry.base())
    cfg = AppConfig.load()  # the default backend, as `ragqa setup` serves the starter
    version, message = publish_starter(registry, adapter=adapter, extras=gguf_extras(cfg.gguf))
    if version is None:
        raise SystemExit(f"{adapter}: {message}")
    qa = QAService(cfg)
    answers = {q: qa.ask(q).answer for q in [q for q, _ in GUIDE_QUESTIONS] + OFF_TOPIC}
    return {
        "score": score_guide(answers),
        "answers": answers,
        "version": version.name,
        "backend": cfg.backend,
    }


def fill_base(adapter: Path, base: Any) -> None:
    """An adapter trained on a copy of v0001 made outside a registry (a GPU machine) names the weights by their
    safetensors hash only; where they are this registry's base, record the base's GGUF hash too (what setup checks)."""
    from model_store.files import sha256_file

    path = adapter / "starter.json"
    card = json.loads(path.read_text(encoding="utf-8"))
    known = card.get("base") or {}
    if known.get("gguf_sha256") or not known.get("safetensors_sha256"):
        return
    if sha256_file(base.path / "model.safetensors") == known["safetensors_sha256"]:
        card["base"] = {**known, "gguf_sha256": base.manifest.get("gguf_sha256")}
        path.write_text(json.dumps(card, indent=1, default=str) + "\n", encoding="utf-8")


HEADER = "variant | F1 | EM | F1 answerable | answerable abstained | abst. P | abst. R | words | train s"


def table_row(name: str, m: dict[str, Any]) -> str:
    if "error" in m:
        return f"{name} | {m['error']}"
    cells = ("f1", "em", "f1_answerable", "answerable_abstained", "abstention_precision", "abstention_recall")
    nums = " | ".join(f"{m[c]:.3f}" for c in cells)
    return f"{name} | {nums} | {m['mean_answer_words']:.1f} | {m.get('train_s', '-')}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("derive", help="variant data and validation rows from `build --views 2`'s .all.jsonl")
    d.add_argument("--rows", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--test-fraction", type=float, default=0.05, help="as the starter's data.test_fraction")
    r = sub.add_parser("run", help="train the variants in parallel, then score each on the validation rows")
    r.add_argument("--model", type=Path, required=True, help="the base model folder (v0001)")
    r.add_argument("--data", type=Path, required=True, help="derive's output")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    r.add_argument("--batch", type=int, default=64, help="validation prompts per generate call")
    r.add_argument("--threads", type=int, default=2, help="CPU threads per training process")
    r.add_argument("--no-base", dest="base", action="store_false", help="do not score the raw base model too")
    g = sub.add_parser(
        "guide", help="publish each adapter on v0001 in a home of its own; ask the guide questions"
    )
    g.add_argument("adapters", nargs="+", help="NAME=ADAPTER_FOLDER")
    g.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "guide":
        guide({a.split("=", 1)[0]: Path(a.split("=", 1)[1]) for a in args.adapters}, args.out)
        return 0
    if args.cmd == "derive":
        print(json.dumps(derive(args.rows, args.out, args.seed, args.test_fraction), indent=1))
        return 0
    report = run(
        args.model, args.data, args.out, args.variants.split(","), args.batch, args.threads, args.base
    )
    print(HEADER)
    for name, m in report["results"].items():
        print(table_row(name, m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
