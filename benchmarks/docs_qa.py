"""Does a model answer questions about documentation it was never shown? The bundled guide and five third-party READMEs.

The guide's 10 questions (evaluation/guide_questions.py) are the issue's acceptance line, but 10 questions on one
author's 7 short pages are a small sample: a model can gain or lose several of them by luck of phrasing. This
benchmark asks 24 questions of the same kinds (a command, a setting's default, a table cell, an install step) about
five READMEs of packages this project installs (benchmarks/docs_qa_corpus/docs/; sources in ../SOURCE.md, licence
texts in ../licenses/), written down before any model was asked them. Each set has its own index; every question
goes through the app's ask path as served (default backend, relevance gate on, greedy). Two choices were made on
the READMEs (README, "The starter"): a prompt-side markdown-to-prose view of the passages was tried and dropped, and
the markdown-dressed starter was shipped partly on its score here.

Each model is a registry folder and a version (`NAME=MODELS_DIR:VERSION`); its home is a hard-linked copy whose
`current` points at that version. Per set and model: right answers (a key phrase, not an abstention; on the READMEs
whitespace is ignored on both sides), abstentions, and whether the passages found held a key phrase (retrieval, the
same for every model). Answers are scored when the record is written, from the stored answers, so a corrected key
phrase needs no new run. Models are compared in pairs on the questions one got right and the other did not, with an
exact two-sided sign test (McNemar's).

    python benchmarks/docs_qa.py          # raw v0001 and the starter v0002 of RAGQA_HOME/models
    python benchmarks/docs_qa.py --model v0001=var/models:v0001 --model starter=var/models:v0002 \
        --model loop_fold=HOME/models:v0002

The committed record (docs/results/docs_qa/docs_qa.json, the default --out) holds five models: v0001; `starter`, the
first pass of the starter (v0002 before 2026-11-29); `loop_fold`, that starter plus the loop run's SFT and PPO
adapters folded exactly onto v0001 (`benchmarks/loop.py --start starter`, then `scripts/train_starter.py fold`);
`dressed`, the first pass plus the markdown-dressed continuation as two adapters; `dressed_r16`, the same folded to
rank 16, the starter shipped since (each published in its own home as v0002; README, "The starter").

Each (model, set) runs in its own process and writes its answers to WORK/<model>-<set>.json; a rerun reuses those
when they came from the same registry folder and version (delete one to ask again).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = ROOT / "benchmarks" / "docs_qa_corpus" / "docs"
GUIDE = ROOT / "app" / "demo_corpus"

# (question, key phrases: a right answer contains one of them, case-insensitive), about benchmarks/docs_qa_corpus/docs/.
README_QUESTIONS: list[tuple[str, list[str]]] = [
    # uvicorn
    ("How do I install uvicorn with the Cython-based dependencies?", ["uvicorn[standard]"]),
    ("Which command runs the example application?", ["uvicorn example:app"]),
    ("Which event loop is used when the standard extras are installed?", ["uvloop"]),
    ("What does the --reload flag use in development mode?", ["watchfiles"]),
    ("How do I run an app with Hypercorn?", ["hypercorn app:app"]),
    ("Which package handles the http protocol in the Cython-based install?", ["httptools"]),
    # faiss-cpu
    ("What is the only dependency of the Faiss library?", ["blas"]),
    ("Which GPU index replaces IndexFlatL2?", ["gpuindexflatl2"]),
    ("What build tool does Faiss compile with?", ["cmake"]),
    # llama-cpp-python
    ("How do I install llama-cpp-python with CUDA support?", ["ggml_cuda=on"]),
    ("Which environment variable sets the cmake build options?", ["cmake_args"]),
    ("Which chat handler does llava-v1.5-7b use?", ["llava15chathandler"]),
    ("Which chat handler does moondream2 use?", ["moondreamchathandler"]),
    ("Which wheel suffix is used for CUDA 12.1?", ["cu121"]),
    (
        "What flags rebuild llama-cpp-python from source when upgrading?",
        ["--force-reinstall", "--no-cache-dir"],
    ),
    # typer
    ("How do I add Typer to my project?", ["uv add typer"]),
    ("Which environment variable disables Rich globally?", ["typer_use_rich"]),
    ("Which package does Typer use to detect the current shell?", ["shellingham"]),
    ("Since which version has Typer vendored Click?", ["0.26.0"]),
    # datasets
    ("How do I install datasets with conda?", ["conda install -c huggingface", "conda-forge datasets"]),
    ("How do I install the audio extras of datasets?", ["datasets[audio]"]),
    ("Which option turns on streaming mode?", ["streaming=true"]),
    ("How do I process data in parallel with datasets?", ["num_proc"]),
    ("Which class is a lazy, streamable dataset?", ["iterabledataset"]),
]


def set_questions(name: str) -> tuple[Path, list[tuple[str, list[str]]], list[str]]:
    """The corpus folder, the answerable questions and the off-topic ones of a set."""
    if name == "readmes":
        return CORPUS, README_QUESTIONS, []
    from evaluation.guide_questions import GUIDE_QUESTIONS, OFF_TOPIC

    return GUIDE, GUIDE_QUESTIONS, OFF_TOPIC


def is_right(set_name: str, answer: str, phrases: list[str]) -> bool:
    """The guide's own rule for the guide (evaluation/guide_questions.right, the acceptance test's); for the READMEs
    the same, with whitespace ignored on both sides: "pip install datasets [audio]" holds "datasets[audio]"."""
    from evaluation.guide_questions import right
    from evaluation.metrics import is_abstention

    if not phrases:
        return False
    if set_name == "guide":
        return right(answer, phrases)
    if is_abstention(answer):  # judged on the answer as written: without its spaces it is not the sentence
        return False
    squeezed = "".join(answer.split()).lower()
    return any("".join(p.split()).lower() in squeezed for p in phrases)


def rescored(set_name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `right` computed now from the stored answer and the current key phrases, so a corrected phrase
    needs no new answers."""
    _, questions, _ = set_questions(set_name)
    phrases = dict(questions)
    out = []
    for r in rows:
        keys = phrases.get(r["question"], [])
        texts = [t.lower() for t in r.get("passages", [])]
        row = {k: v for k, v in r.items() if k != "passages"}  # the record keeps answers, not passage texts
        row.update(
            phrases=keys,
            right=is_right(set_name, r["answer"], keys),
            retrieval_hit=any(k in t for k in keys for t in texts),
        )
        out.append(row)
    return out


def score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over one model's answers to one set (rows from `rescored`)."""
    answerable = [r for r in rows if r["phrases"]]
    off = [r for r in rows if not r["phrases"]]
    return {
        "right": sum(r["right"] for r in answerable),
        "of": len(answerable),
        "abstained": sum(r["abstained"] for r in answerable),
        "retrieval_hit": sum(r["retrieval_hit"] for r in answerable),
        "off_topic_abstained": sum(r["abstained"] for r in off),
        "off_topic": len(off),
    }


def sign_test(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of McNemar's test: of the questions exactly one model got right, is the split
    further from half than chance would make it?"""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired on the answerable questions: how many only A got right, only B, and the sign test's p."""
    right_a = {r["question"]: r["right"] for r in a if r["phrases"]}
    right_b = {r["question"]: r["right"] for r in b if r["phrases"]}
    shared = sorted(right_a.keys() & right_b.keys())
    a_only = sum(right_a[q] and not right_b[q] for q in shared)
    b_only = sum(right_b[q] and not right_a[q] for q in shared)
    return {
        "questions": len(shared),
        "only_a": a_only,
        "only_b": b_only,
        "p_sign_test": round(sign_test(a_only, b_only), 4),
    }


# ---- asking (one process per model and set) --------------------------------------------------------------------
def ask(home: Path, set_name: str, out: Path) -> None:
    """Every question of the set through the app's ask path in `home`; rows written to `out`."""
    os.environ["RAGQA_HOME"] = str(home)
    from app.config import AppConfig
    from app.qa import QAService
    from evaluation.metrics import is_abstention

    _, questions, off_topic = set_questions(set_name)
    cfg = AppConfig.load()
    qa = QAService(cfg)
    rows = []
    t0 = time.perf_counter()
    for question, phrases in [*questions, *((q, []) for q in off_topic)]:
        result = qa.ask(question)
        rows.append(
            {
                "question": question,
                "phrases": phrases,
                "answer": result.answer,
                "right": is_right(set_name, result.answer, phrases),
                "abstained": is_abstention(result.answer),
                "sources": [Path(p.source).name for p in result.passages],
                "passages": [p.text for p in result.passages],
            }
        )
    served = qa.generator.current()
    record = {
        "set": set_name,
        "rows": rows,
        "backend": served.backend,
        "served": served.version,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def index_home(work: Path, set_name: str) -> Path:
    """A home holding only the set's index (built once; each model's home links to it)."""
    home = work / f"index-{set_name}"
    if (home / "index").exists():
        return home
    corpus, _, _ = set_questions(set_name)
    env = {**os.environ, "RAGQA_HOME": str(home), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "app", "ingest", str(corpus)], env=env, check=True)
    return home


def model_home(work: Path, model: str, registry: Path, version: str, set_name: str) -> Path:
    """A hard-linked copy of the registry whose `current` is `version`, beside the set's index."""
    from model_store.files import link_or_copy

    if not (registry / version).is_dir():
        raise SystemExit(f"{registry} has no version {version} (run `ragqa setup`, or name another registry)")
    home = work / f"{model}-{set_name}"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    # Versions are immutable, so hard links are as good as copies (copies where --work is on another file system).
    shutil.copytree(registry, home / "models", copy_function=link_or_copy, symlinks=True)
    current = home / "models" / "current"
    current.unlink(missing_ok=True)
    current.symlink_to(version)
    shutil.copytree(index_home(work, set_name) / "index", home / "index", copy_function=link_or_copy)
    return home


def cached_answers(path: Path, registry: Path, version: str) -> dict[str, Any] | None:
    """A previous run's answers for this model, if they came from the same registry folder and version."""
    if not path.exists():
        return None
    answers = json.loads(path.read_text(encoding="utf-8"))
    same = answers.get("registry") == str(registry.resolve()) and answers.get("version") == version
    return answers if same else None


def parse_model(spec: str) -> tuple[str, Path, str]:
    name, _, where = spec.partition("=")
    folder, _, version = where.rpartition(":")
    if not name or not folder or not version:
        raise SystemExit(f"--model wants NAME=MODELS_DIR:VERSION, got {spec!r}")
    return name, Path(folder), version


def run(models: list[tuple[str, Path, str]], sets: list[str], work: Path, out: Path) -> dict[str, Any]:
    from benchmarks.machine import cpu, load_average

    work.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"machine": {**cpu(), "cpus": os.cpu_count(), "load_average": load_average()}}
    answers: dict[str, dict[str, Any]] = {}
    for set_name in sets:
        for name, registry, version in models:
            path = work / f"{name}-{set_name}.json"
            cached = cached_answers(path, registry, version)
            if cached is None:
                home = model_home(work, name, registry, version, set_name)
                cmd = [
                    sys.executable,
                    __file__,
                    "ask",
                    "--home",
                    str(home),
                    "--set",
                    set_name,
                    "--out",
                    str(path),
                ]
                subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
                cached = json.loads(path.read_text(encoding="utf-8"))
                cached.update(registry=str(registry.resolve()), version=version)
                path.write_text(json.dumps(cached, indent=1) + "\n", encoding="utf-8")
            cached["rows"] = rescored(set_name, cached["rows"])
            answers.setdefault(set_name, {})[name] = cached
    record["models"] = {
        name: {"registry": str(registry), "version": version} for name, registry, version in models
    }
    record["scores"] = {s: {m: score(a["rows"]) for m, a in by.items()} for s, by in answers.items()}
    record["paired"] = {
        s: {f"{a}_vs_{b}": compare(by[a]["rows"], by[b]["rows"]) for a, b in combinations(list(by), 2)}
        for s, by in answers.items()
    }
    record["answers"] = answers
    record["machine"]["load_average_after"] = load_average()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print_table(record)
    return record


def print_table(record: dict[str, Any]) -> None:
    print("set | model | right | abstained | retrieval hit | off-topic abstained")
    for set_name, by in record["scores"].items():
        for model, s in by.items():
            off = f"{s['off_topic_abstained']}/{s['off_topic']}" if s["off_topic"] else "-"
            print(
                f"{set_name} | {model} | {s['right']}/{s['of']} | {s['abstained']} | {s['retrieval_hit']} | {off}"
            )
    for set_name, pairs in record["paired"].items():
        for pair, c in pairs.items():
            print(
                f"{set_name} {pair}: only first {c['only_a']}, only second {c['only_b']}, p {c['p_sign_test']}"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command")
    a = sub.add_parser("ask", help="(internal) one model's answers to one set")
    a.add_argument("--home", type=Path, required=True)
    a.add_argument("--set", choices=("readmes", "guide"), required=True)
    a.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--model",
        action="append",
        help="NAME=MODELS_DIR:VERSION (repeat); default: v0001 and the starter v0002 of RAGQA_HOME/models",
    )
    p.add_argument("--sets", default="readmes,guide")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench/docs_qa"))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "docs_qa" / "docs_qa.json")
    args = p.parse_args(argv)
    if args.command == "ask":
        ask(args.home, args.set, args.out)
        return 0
    from settings.paths import ragqa_home

    models = ragqa_home() / "models"
    specs = args.model or [f"v0001={models}:v0001", f"starter={models}:v0002"]
    sets = args.sets.split(",")
    unknown = sorted(set(sets) - {"readmes", "guide"})
    if unknown:
        raise SystemExit(f"--sets takes readmes and/or guide, not {', '.join(unknown)}")
    run([parse_model(s) for s in specs], sets, args.work, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
