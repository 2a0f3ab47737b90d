"""Simulated annotator: rank the current model's candidates by token F1 against gold answers.

`python scripts/simulate_feedback.py --qa FILE [--k-candidates 4] [--correct-fraction 0.2] ...` (that script is a thin
entry point; the logic lives here so tests and the loop benchmark import a package, not a script).

For every question of a labelled QA file (SQuAD v1.1/v2.0 JSON, NQ-open or plain JSONL, read by
evaluation.formats) it does what a careful user of the app would do, through the same code path as the UI:
  1. retrieve passages with QAService.retrieve and keep those that fit the model's window (what the model sees);
  2. sample k candidates with QAService.candidates (one batched sample over the one prompt: llama.cpp's parallel
     sequences, or one transformers generate), or for `--batch-size` questions at once with
     QAService.candidates_batch (one generate for all their candidates on the transformers backend; the same
     prompts and settings, only the sampled texts differ), and record the interaction, the passages shown and the
     candidates with FeedbackStore.record_interaction. Without --batch-size: one question at a time where
     llama.cpp serves the current version, else 8 at once on transformers (the faster of the two where each
     runs: `sampling_plan`);
  3. rank the candidates by SQuAD token F1 against the gold answers (evaluation.metrics.score_answer: SQuAD
     normalisation, citation markers removed; an unanswerable SQuAD 2.0 question scores 1 for an abstention);
     equal F1 is a tie; when every candidate scores 0 the ranking carries no preference and is recorded as
     "both bad";
  4. for a seeded `--correct-fraction` of the questions, write the gold answer as a correction replacing all
     candidates, as a full sentence citing the first shown passage that contains it ("<gold> [n]."), so SFT
     learns the citation format (the plain gold answer when no shown passage contains it; the NO_ANSWER
     sentence for an unanswerable question).
Every row is written by the rater session `simulated:f1`, which the store and its exports report as simulated.
A rerun skips the questions that session has recorded already (same question text), so it resumes.

The file's contexts are indexed first (one document per context) into RAGQA_HOME's index, or into `--index DIR`;
this is skipped when they are all indexed already. The RAGQA_HOME index is never overwritten when it holds other
documents: pass --index then.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import AppConfig
from evaluation.errors import EvaluationError
from evaluation.formats import QADataset, QAExample, load_qa
from evaluation.metrics import contains_answer, score_answer
from retrieval.prompt import NO_ANSWER
from retrieval.types import Passage

SESSION = "simulated:f1"
_F1_DECIMALS = 9  # F1 values equal to this precision are a tie (float noise is not a preference)


class SimulationError(EvaluationError, RuntimeError):
    """The simulation cannot run as asked (bad file, no model, an index holding other documents...)."""


@dataclass
class SimulationOptions:
    qa: Path
    k_candidates: int = 4
    limit: int | None = None
    seed: int = 0
    correct_fraction: float = 0.0
    only_answerable: bool = False
    # share of unanswerable questions among those asked; None = as they come in the file (SQuAD 2.0 dev: ~1/2)
    unanswerable_fraction: float | None = None
    articles: tuple[str, ...] = ()
    exclude_articles: tuple[str, ...] = ()
    index: Path | None = None
    fmt: str | None = None
    progress: bool = True
    # questions sampled together in one generate (transformers backend); 1 = one by one; None = by the backend
    # that serves (sampling_plan)
    batch_size: int | None = None


@dataclass
class SimulationSummary:
    questions: int = 0  # questions recorded (with their candidates)
    candidates: int = 0
    rankings: int = 0  # all rankings, both-bad included
    both_bad: int = 0
    corrections: int = 0
    skipped: int = 0  # questions this session had recorded already (a rerun resumes)
    errors: list[str] = field(default_factory=list)  # "qid: message" for questions that could not be asked
    seconds: float = 0.0
    sampling: str = ""  # how the candidates were sampled (sampling_plan's words)

    def text(self) -> str:
        lines = [
            f"simulated feedback ({SESSION}): {self.questions} questions, {self.candidates} candidates, "
            f"{self.rankings} rankings ({self.both_bad} both bad), {self.corrections} corrections, "
            f"{len(self.errors)} errors in {self.seconds:.1f} s"
            + (f"; {self.skipped} questions recorded by an earlier run skipped" if self.skipped else "")
        ]
        if self.sampling:
            lines.append(f"  sampled {self.sampling}")
        lines += [f"  error {e}" for e in self.errors[:10]]
        return "\n".join(lines)


# ---- pure logic: ranking and corrections ----------------------------------------------------------------
def candidate_f1(text: str, example: QAExample) -> float:
    """SQuAD token F1 of one candidate against the gold answers (SQuAD 2.0 rules for unanswerable ones)."""
    return float(score_answer(text, example.answers, example.unanswerable)["f1"])


def f1_ranking(ids: Sequence[int], scores: Sequence[float]) -> tuple[list[list[int]], bool]:
    """Groups of candidate ids best first (equal F1 = one group) and whether the ranking is "both bad".

    Every candidate at F1 0 carries no preference (none overlaps the gold answer): ([], True).
    """
    if len(ids) != len(scores):
        raise ValueError("one score per candidate is needed")
    if all(s <= 0.0 for s in scores):
        return [], True
    groups: dict[float, list[int]] = {}
    for cid, score in zip(ids, scores, strict=True):
        groups.setdefault(round(score, _F1_DECIMALS), []).append(cid)
    return [groups[s] for s in sorted(groups, reverse=True)], False


def correction_text(example: QAExample, passages: Sequence[Passage]) -> str:
    """The answer a user who knows the gold would write: "<gold> [n]." citing the passage that contains it."""
    if example.unanswerable or not example.answers:
        return NO_ANSWER
    for gold in example.answers:
        for p in sorted(passages, key=lambda p: p.rank):
            if contains_answer(p.text, [gold]):
                return f"{gold.strip().rstrip('.')} [{p.rank}]."
    return example.answers[0].strip()


def pick_corrected(n: int, fraction: float, seed: int) -> set[int]:
    """Indices (of n questions) to correct: round(fraction * n) of them, chosen by the seed."""
    if not 0.0 <= fraction <= 1.0:
        raise SimulationError(f"--correct-fraction must be within [0, 1], got {fraction}")
    return set(random.Random(f"corrections:{seed}").sample(range(n), round(fraction * n)))


# ---- choosing questions ---------------------------------------------------------------------------------
def title_of(example: QAExample, dataset: QADataset) -> str | None:
    doc = dataset.documents.get(example.doc_id) if example.doc_id else None
    return doc.title if doc else None


def select(dataset: QADataset, options: SimulationOptions) -> list[QAExample]:
    """The questions to ask: answerable filter, article filters, then a seeded `limit` subset in file order."""
    from evaluation.runner import select_examples

    examples = [e for e in dataset.examples if not (options.only_answerable and e.unanswerable)]
    if options.articles or options.exclude_articles:
        titles = {title_of(e, dataset) for e in dataset.examples}
        unknown = sorted(set(options.articles).union(options.exclude_articles) - titles)
        if unknown:
            raise SimulationError(f"no article titled {unknown[0]!r} in {dataset.path}")
        if options.articles:
            examples = [e for e in examples if title_of(e, dataset) in options.articles]
        examples = [e for e in examples if title_of(e, dataset) not in options.exclude_articles]
    if not examples:
        raise SimulationError(f"no question of {dataset.path} is left after the filters")
    if options.limit is not None and options.limit < 1:
        raise SimulationError(f"--limit must be at least 1, got {options.limit}")
    if options.unanswerable_fraction is not None:
        return mix_unanswerable(examples, options.unanswerable_fraction, options.limit, options.seed)
    return select_examples(examples, options.limit, options.seed)


def mix_unanswerable(
    examples: Sequence[QAExample], fraction: float, limit: int | None, seed: int
) -> list[QAExample]:
    """`limit` questions (None: as many as the mix allows) of which round(fraction * limit) are unanswerable,
    each part a seeded subset, kept in file order. Why: the share of questions the documents cannot answer
    decides how often the corrections teach the abstention sentence (SQuAD 2.0 dev has ~1/2; a user's questions
    about their own documents far fewer)."""
    if not 0.0 <= fraction <= 1.0:
        raise SimulationError(f"--unanswerable-fraction must be within [0, 1], got {fraction}")
    unanswerable = [i for i, e in enumerate(examples) if e.unanswerable]
    answerable = [i for i, e in enumerate(examples) if not e.unanswerable]
    if limit is None:  # the largest mix both parts can fill
        limits = [
            len(unanswerable) / fraction if fraction else None,
            len(answerable) / (1 - fraction) if fraction < 1 else None,
        ]
        limit = int(min(x for x in limits if x is not None))
    want = round(fraction * limit)
    if want > len(unanswerable) or limit - want > len(answerable):
        raise SimulationError(
            f"{limit} questions with {fraction:.0%} unanswerable need {want} unanswerable and {limit - want} "
            f"answerable ones; the filters leave {len(unanswerable)} and {len(answerable)}: lower --limit or "
            "change --unanswerable-fraction"
        )
    rng = random.Random(f"unanswerable:{seed}")
    picked = sorted(rng.sample(unanswerable, want) + rng.sample(answerable, limit - want))
    return [examples[i] for i in picked]


# ---- the index ------------------------------------------------------------------------------------------
def ensure_indexed(
    dataset: QADataset, examples: Sequence[QAExample], index_dir: Path, cfg: AppConfig, embedder: Any
) -> int:
    """Index the contexts of `examples` into `index_dir` unless they are all there; returns files ingested.

    A folder ingest mirrors the folder, so an index that holds other documents is refused rather than emptied.
    """
    import hashlib

    from evaluation.runner import write_corpus
    from retrieval.errors import IndexMissingError, RetrievalError
    from retrieval.index import HybridIndex
    from retrieval.ingest import ingest

    wanted = {e.doc_id for e in examples if e.doc_id}
    if not wanted:
        raise SimulationError(f"{dataset.path} has no contexts to index: use a file with contexts")
    try:
        files = HybridIndex.open(index_dir).files
    except IndexMissingError:
        files = {}
    except RetrievalError as e:
        raise SimulationError(str(e)) from e
    digest = {d: hashlib.sha256(dataset.documents[d].text.encode("utf-8")).hexdigest() for d in wanted}
    if all(d in files and files[d].sha256 == digest[d] for d in wanted):
        return 0
    # Contexts of this file indexed by an earlier run (other --articles) stay: the folder ingested has them too.
    keep = wanted | (set(files) & set(dataset.documents))
    sub = QADataset(dataset.path, dataset.format, list(examples), {d: dataset.documents[d] for d in keep})
    others = sorted(set(files) - set(dataset.documents))
    if others:
        raise SimulationError(
            f"the index {index_dir} holds {len(others)} other documents (e.g. {others[0]}); indexing the QA "
            "file there would remove them: pass --index DIR to simulate on a separate index"
        )
    corpus = Path(tempfile.mkdtemp(prefix="ragqa-simulate-"))
    try:
        write_corpus(sub, corpus)
        report = ingest(
            corpus,
            index_dir,
            embedder,
            **cfg.ingest_options(),
        )
    except RetrievalError as e:
        raise SimulationError(str(e)) from e
    finally:
        shutil.rmtree(corpus, ignore_errors=True)
    if report.skipped:
        raise SimulationError(f"{len(report.skipped)} contexts could not be indexed: {report.skipped[:3]}")
    return report.indexed + report.updated


@contextmanager
def serving_config(cfg: AppConfig, index_dir: Path | None) -> Iterator[AppConfig]:
    """`cfg`, or with `--index`, a config whose index is DIR and whose models are RAGQA_HOME's (via symlinks)."""
    from settings.paths import Paths

    if index_dir is None:
        yield cfg
        return
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-simulate-home-"))
    try:
        os.symlink(Path(index_dir).resolve(), tmp / "index")
        os.symlink(cfg.paths.models_dir.resolve(), tmp / "models")
        yield cfg.with_(paths=Paths(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- the simulation -------------------------------------------------------------------------------------
def shown_passages(qa: Any, example: QAExample) -> list[Passage]:
    """Retrieve as the UI does and keep the passages that fit the model's window: what the model sees."""
    passages = qa.retrieve(example.question)
    _messages, shown = qa.build_prompt(qa.generator.current(), example.question, passages, ())
    return shown


def record_one(
    store: Any, example: QAExample, shown: list[Passage], cands: Sequence[Any], *, correct: bool
) -> dict[str, int]:
    """Record the interaction and its candidates, rank them by F1, maybe correct; returns counts."""
    records = [c.to_record(label=chr(ord("A") + i)) for i, c in enumerate(cands)]
    ids = store.record_interaction(
        example.question, [p.to_dict() for p in shown], records, session_id=SESSION
    )
    order, both_bad = f1_ranking(ids.candidate_ids, [candidate_f1(c.text, example) for c in cands])
    store.record_ranking(ids.interaction_id, order, both_bad=both_bad, session_id=SESSION)
    counts = {"candidates": len(cands), "both_bad": int(both_bad), "corrections": 0}
    if correct:
        counts["corrections"] = _record_correction(store, ids, correction_text(example, shown), cands)
    return counts


def simulate_one(
    qa: Any, store: Any, example: QAExample, *, k_candidates: int, seed: int, correct: bool
) -> dict[str, int]:
    """Ask one question as the UI does, record it, rank the candidates by F1, maybe correct; returns counts."""
    shown = shown_passages(qa, example)
    cands = qa.candidates(example.question, shown, (), n=k_candidates, seed=seed)
    return record_one(store, example, shown, cands, correct=correct)


def _record_correction(store: Any, ids: Any, text: str, cands: Sequence[Any]) -> int:
    """Record the correction replacing every candidate; 0 when a candidate already says exactly that."""
    from feedback_store.pairs import normalize_text

    if any(normalize_text(c.text) == normalize_text(text) for c in cands):
        return 0  # the store refuses a correction identical to an answer it replaces: nothing to teach
    store.record_correction(ids.interaction_id, text, replaces=list(ids.candidate_ids), session_id=SESSION)
    return 1


def recorded_questions(store: Any) -> set[str]:
    """Question texts the simulated rater session has recorded already (a rerun skips them)."""
    return {rec.question.strip() for rec in store.iter_interactions() if rec.session_id == SESSION}


def question_seed(options: SimulationOptions, index: int) -> int:
    """The sampling seed of the index-th selected question (the same whether it is asked alone or batched)."""
    return options.seed * 1_000_003 + index


def simulate_group(
    qa: Any,
    store: Any,
    group: Sequence[tuple[int, QAExample]],
    options: SimulationOptions,
    corrected: set[int],
    summary: SimulationSummary,
) -> None:
    """Ask a group of (index, question) together: passages one by one, candidates in one batched sample."""
    from app.qa import QAError
    from feedback_store.errors import FeedbackError

    asked: list[tuple[int, QAExample, list[Passage]]] = []
    for i, example in group:
        try:
            asked.append((i, example, shown_passages(qa, example)))
        except QAError as e:
            summary.errors.append(f"{example.qid}: {e}")
    if not asked:
        return
    try:
        if len(asked) == 1:  # exactly the UI's call (QAService.candidates)
            i, example, shown = asked[0]
            batches = [
                qa.candidates(
                    example.question,
                    shown,
                    (),
                    n=options.k_candidates,
                    seed=question_seed(options, i),
                )
            ]
        else:
            batches = qa.candidates_batch(
                [(example.question, shown) for _i, example, shown in asked],
                options.k_candidates,
                [question_seed(options, i) for i, _e, _s in asked],
            )
    except QAError as e:
        summary.errors.extend(f"{example.qid}: {e}" for _i, example, _s in asked)
        return
    for (i, example, shown), cands in zip(asked, batches, strict=True):
        try:
            counts = record_one(store, example, shown, cands, correct=i in corrected)
        except FeedbackError as e:
            raise SimulationError(f"the feedback store refused question {example.qid}: {e}") from e
        summary.questions += 1
        summary.rankings += 1
        summary.candidates += counts["candidates"]
        summary.both_bad += counts["both_bad"]
        summary.corrections += counts["corrections"]


def simulate(
    options: SimulationOptions, *, config: AppConfig | None = None, embedder: Any = None
) -> SimulationSummary:
    """Run the simulated annotator (see the module docstring); returns what it recorded.

    Questions are asked in groups of `options.batch_size` (None: `sampling_plan` chooses) whose candidates are
    sampled in one batched generate (ServedModel.sample_batch); the rows recorded are the same as one question at a
    time, only the sampled texts differ (a sample depends on the batch it is drawn in). Questions the `simulated:f1` session has recorded
    already are skipped, so an interrupted run resumes where it stopped.
    """
    from tqdm import tqdm

    from app.qa import QAService
    from evaluation.formats import EvalDataError
    from feedback_store.store import FeedbackStore

    t0 = time.perf_counter()
    if not 2 <= options.k_candidates <= 4:
        raise SimulationError(f"--k-candidates must be between 2 and 4, got {options.k_candidates}")
    if options.batch_size is not None and options.batch_size < 1:
        raise SimulationError(f"--batch-size must be at least 1, got {options.batch_size}")
    try:
        dataset = load_qa(options.qa, options.fmt)
    except EvalDataError as e:
        raise SimulationError(str(e)) from e
    examples = select(dataset, options)
    corrected = pick_corrected(len(examples), options.correct_fraction, options.seed)
    cfg, batch_size, sampling = sampling_plan(config or AppConfig.load(), options.batch_size)
    if embedder is None:
        from retrieval.embedder import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder(cfg.embedder)
    ensure_indexed(dataset, examples, options.index or cfg.paths.index_dir, cfg, embedder)
    summary = SimulationSummary(sampling=sampling)
    with serving_config(cfg, options.index) as served, FeedbackStore.open(cfg.paths.feedback_db) as store:
        qa = QAService(served, embedder=embedder)
        done = recorded_questions(store)
        todo = [(i, e) for i, e in enumerate(examples) if e.question.strip() not in done]
        summary.skipped = len(examples) - len(todo)
        bar = tqdm(
            total=len(examples),
            initial=summary.skipped,
            desc="simulated questions",
            unit="q",
            disable=not options.progress,
        )
        with bar:
            for start in range(0, len(todo), batch_size):
                group = todo[start : start + batch_size]
                simulate_group(qa, store, group, options, corrected, summary)
                bar.update(len(group))
    summary.seconds = time.perf_counter() - t0
    return summary


BATCHED = 8  # questions per generate when transformers samples and no --batch-size is given


def simulation_config(cfg: AppConfig, batch_size: int) -> AppConfig:
    """The config the candidates are sampled with: batching resolves backend `auto` to transformers.

    `auto` serves with llama.cpp on a CPU, which samples one question at a time (its k candidates share the
    prompt); transformers samples a whole group of questions in one generate. A backend named in the config (or
    a version's manifest) is kept, and then the questions are sampled one after another.
    """
    return cfg.with_(backend="transformers") if batch_size > 1 and cfg.backend == "auto" else cfg


def sampling_plan(cfg: AppConfig, batch_size: int | None) -> tuple[AppConfig, int, str]:
    """(config, questions per sample, words for the summary). No batch size given: one question at a time where
    llama.cpp serves the current version (its k candidates as parallel sequences over the one prompt), else
    BATCHED questions in one transformers generate.

    Why llama.cpp first: measured with benchmarks/simulate_speed.py (100 squad2 questions x 4 candidates, 48-token
    answers), one question at a time on llama.cpp took 3.11 s a question against 5.33 s batched on transformers on a
    2-core AVX2-only CPU (fp32), and 0.93 s against 1.25 s on a 2-core Zen 4 (bf16); the records stored were the
    same. Without llama.cpp (not installed, no GGUF of the version, a GPU, a 4-bit base) transformers samples, and
    batching is what makes it fast there (7.39 s a question one after another on that Zen 4).
    """
    if batch_size is None:
        backend = served_backend(cfg)
        batch_size = 1 if backend == "llamacpp" else BATCHED
        cfg = simulation_config(cfg, batch_size)
    else:
        cfg = simulation_config(cfg, batch_size)
        backend = served_backend(cfg)
    if batch_size == 1:
        return cfg, 1, f"one question at a time on {backend}"
    return cfg, batch_size, f"{batch_size} questions per batch on {backend}"


def served_backend(cfg: AppConfig) -> str:
    """The backend that will answer with the current version under `cfg` (evaluation.runner.serving_backend: `auto`
    resolved; a llama.cpp it cannot have falls back to transformers, as loading does)."""
    from evaluation.runner import serving_backend
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(cfg.paths.models_dir)
    current = registry.current_name()
    if current is None:
        raise SimulationError(f"no model is published in {cfg.paths.models_dir}: run `ragqa setup` first")
    return serving_backend(cfg, registry, current)


# ---- command line ---------------------------------------------------------------------------------------
def _titles(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simulate_feedback.py",
        description=f"Simulated annotator: rank the model's candidates by token F1 (rater session {SESSION}).",
    )
    p.add_argument("--qa", type=Path, required=True, help="QA file with gold answers (SQuAD JSON, JSONL)")
    p.add_argument("--format", dest="fmt", choices=("squad", "nq-open", "jsonl"), help="default: detected")
    p.add_argument("--k-candidates", type=int, default=4, help="candidates per question, 2..4 (default 4)")
    p.add_argument("--limit", type=int, help="a seeded random subset of N questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--correct-fraction", type=float, default=0.0, help="share of questions also corrected")
    p.add_argument("--only-answerable", action="store_true", help="skip SQuAD 2.0 unanswerable questions")
    p.add_argument(
        "--unanswerable-fraction",
        type=float,
        help="share of unanswerable questions among those asked (default: as in the file)",
    )
    p.add_argument("--articles", type=_titles, default=(), help="comma-separated SQuAD titles to keep")
    p.add_argument("--exclude-articles", type=_titles, default=(), help="comma-separated titles to skip")
    p.add_argument("--index", type=Path, help="index folder to use (default: RAGQA_HOME's index)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="questions whose candidates are sampled in one generate (transformers backend); default: one at a "
        f"time where llama.cpp serves the current version, else {BATCHED}",
    )
    p.add_argument(
        "--batch", action="store_true", help="no progress bar (logs and CI); the summary still prints"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = SimulationOptions(
        qa=args.qa,
        k_candidates=args.k_candidates,
        limit=args.limit,
        seed=args.seed,
        correct_fraction=args.correct_fraction,
        only_answerable=args.only_answerable,
        unanswerable_fraction=args.unanswerable_fraction,
        articles=args.articles,
        exclude_articles=args.exclude_articles,
        index=args.index,
        fmt=args.fmt,
        progress=not args.batch,
        batch_size=args.batch_size,
    )
    from settings.errors import run_guarded  # the one error boundary, as in `ragqa`

    return run_guarded(lambda: _report(simulate(options)))


def _report(summary: SimulationSummary) -> int:
    print(summary.text())
    return 0 if summary.questions or summary.skipped else 1  # a finished run resumed: nothing left to do
