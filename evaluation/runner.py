"""Run a labelled QA file through the real ask path and turn the answers into metrics.

The questions go through `QAService.ask`, exactly as the UI and `ragqa ask` answer them (`batch_size` 1), or
through `QAService.ask_many`: the same retrieval, prompt and post-processing with `batch_size` greedy answers per
generate call. Every answer is appended to `answers.jsonl` in the report folder as it completes, and a rerun into
the same folder with the same options answers only the questions still missing (evaluation/journal.py).

The documents are the file's own contexts, written one file per context into a temporary folder and indexed into a
temporary RAGQA home (or an existing index with `--index`). That home's `models/` holds hard links to the one
version being evaluated plus its own `current` pointer (no weights are copied unless the temporary folder is on
another file system), and the user's registry - in particular its `current` - is never touched (`--model VERSION`
evaluates a version without switching to it).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from app.config import AppConfig
from evaluation import metrics as M
from evaluation.errors import EvaluationError
from evaluation.formats import QADataset, QAExample, load_qa
from evaluation.journal import AnswerJournal
from model_store.files import link_or_copy
from model_store.registry import ModelRegistry, RegistryError
from retrieval.types import Passage
from settings.paths import Paths

T = TypeVar("T")


class EvalError(EvaluationError, RuntimeError):
    """The evaluation cannot run as asked; the message says what to do."""


RECALL_KS = (1, 5, 10)
# Prompts per generate call of a batched eval. 16 answers of 335-token prompts (48 new tokens) took ~8 s in one
# bf16 generate on the 2-core Zen 4 box (0.5 s per answer); with ~750-token RAG prompts on that box under load,
# one batched generate cost the same CPU time as the answers one by one (prefill dominates), so the gain there is
# small, while on a GPU a batch costs little more than one answer. Larger batches pad more and hold every answer
# until the batch's longest one ends.
DEFAULT_BATCH_SIZE = 16
JOURNAL = "answers.jsonl"


@dataclass
class EvalOptions:
    qa_path: Path
    fmt: str | None = None  # None: detect from the content
    model: str | None = None  # registry version; None: the registry's current
    k: int | None = None  # passages per answer; None: config.k
    limit: int | None = None  # evaluate a seeded random subset of this many questions
    seed: int = 0
    out_dir: Path | None = None  # None: RAGQA_HOME/evals/<stamp>-<file>-<version>
    index_dir: Path | None = None  # an existing index instead of indexing the file's contexts
    max_new_tokens: int | None = None  # None: config.max_new_tokens
    max_prompt_tokens: str | None = None  # auto | off | a number; None: config.max_prompt_tokens
    depth: int = 10  # passages retrieved for recall@k / MRR
    progress: bool = True
    # Greedy answers per generate call; 1: one `QAService.ask` per question (the app's exact path, with its
    # latency). Above 1 a config backend of `auto` answers with transformers (the backend that batches).
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class ExampleResult:
    """One question through the ask path, scored."""

    example: QAExample
    answer: str = ""
    passages: list[Passage] = field(default_factory=list)  # what the model saw, rank order
    ranking: list[str] = field(default_factory=list)  # sources of the top-`depth` retrieval
    gold_known: bool = False  # False: no gold context/source to score retrieval against
    first_gold_rank: int | None = None
    scores: dict[str, Any] = field(default_factory=dict)  # em, f1, contains, abstained
    cited: list[int] = field(default_factory=list)
    citation_mode: str = "none"
    citation_correct: bool | None = None  # None: the answer has no model-written citation
    words: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    finished: bool = True
    model_version: str = ""
    error: str | None = None
    gated: bool = False  # answered "not in the documents" by the relevance gate, without the model

    def latency(self, key: str) -> float | None:
        """This answer's `key` timing for the latency figures; None when it errored or the gate answered (its ~0 ms
        would make the model look faster) or the timing was not taken."""
        return None if self.error is not None or self.gated else self.timings_ms.get(key)

    def to_json(self) -> dict[str, Any]:
        e = self.example
        return {
            "id": e.qid,
            "question": e.question,
            "answers": list(e.answers),
            "unanswerable": e.unanswerable,
            "gold_source": e.source or e.doc_id,
            "answer": self.answer,
            "model_version": self.model_version,
            "passages": [{"rank": p.rank, "source": p.source, "chunk_id": p.chunk_id} for p in self.passages],
            "ranking": self.ranking,
            "first_gold_rank": self.first_gold_rank,
            **{k: self.scores.get(k) for k in ("em", "f1", "contains", "abstained")},
            "cited": self.cited,
            "citation_mode": self.citation_mode,
            "citation_correct": self.citation_correct,
            "words": self.words,
            "finished": self.finished,
            "relevance_gated": self.gated,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "error": self.error,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything but the example, unrounded and with the passages' text (the journal's line)."""
        return {
            "qid": self.example.qid,
            "question": self.example.question,
            "answer": self.answer,
            "passages": [p.to_dict() for p in self.passages],
            "ranking": self.ranking,
            "gold_known": self.gold_known,
            "first_gold_rank": self.first_gold_rank,
            "scores": self.scores,
            "cited": self.cited,
            "citation_mode": self.citation_mode,
            "citation_correct": self.citation_correct,
            "words": self.words,
            "timings_ms": self.timings_ms,
            "finished": self.finished,
            "model_version": self.model_version,
            "error": self.error,
            "gated": self.gated,
        }

    @classmethod
    def from_record(cls, example: QAExample, record: dict[str, Any]) -> ExampleResult:
        fields = {k: v for k, v in record.items() if k not in ("qid", "question", "passages")}
        return cls(example, passages=[Passage(**p) for p in record["passages"]], **fields)


# ---- selection and corpus ----------------------------------------------------------------------------------
def select_examples(examples: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """A seeded random subset of `limit` questions (or preference pairs), kept in file order (all of them when
    limit is None)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    picked = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in picked]


def write_corpus(dataset: QADataset, folder: Path) -> int:
    """Write each distinct context as `folder/<doc_id>` (plain text); returns the number of files."""
    folder.mkdir(parents=True, exist_ok=True)
    for doc in dataset.documents.values():
        (folder / doc.doc_id).write_text(doc.text, encoding="utf-8")
    return len(dataset.documents)


def _squash(text: str) -> str:
    return " ".join(text.split())


def gold_matcher(
    example: QAExample, dataset: QADataset, corpus_from_file: bool
) -> Callable[[Passage], bool] | None:
    """How to recognise the question's gold passage in a ranking (None: it cannot be recognised).

    With the file's own corpus the gold is the context's file; with an existing index it is the `source` the
    file names, else any chunk whose text lies inside the gold context (chunks are slices of a document).
    """
    if example.source:
        return lambda p: p.source == example.source
    if example.doc_id is None:
        return None
    if corpus_from_file:
        return lambda p: p.source == example.doc_id
    context = _squash(dataset.documents[example.doc_id].text)
    return lambda p: bool(_squash(p.text)) and _squash(p.text) in context


# ---- the temporary home --------------------------------------------------------------------------------------
def resolve_version(registry: ModelRegistry, requested: str | None) -> str:
    """`requested`, or the registry's current version; checked to exist before any indexing starts."""
    name = requested or registry.current_name()
    if name is None:
        raise EvalError(f"no model is published in {registry.root}: run `ragqa setup` first")
    try:
        registry.get(name)
    except RegistryError as e:
        raise EvalError(str(e)) from e
    return name


def pin_version(models_dir: Path, registry: ModelRegistry, name: str) -> str:
    """Make `models_dir` (a private folder) serve version `name` of `registry`; returns the name.

    Registry versions are immutable, so hard links to their files are as good as a copy and cost nothing (a copy
    where the folders are on different file systems). Not a symlink to the folder: the registry refuses a
    symlinked version (it could point anywhere).
    """
    version = registry.get(resolve_version(registry, name))
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / name
    if not link.exists():
        shutil.copytree(version.path.resolve(), link, copy_function=link_or_copy)
    tmp = models_dir / ".current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(name, tmp)
    os.replace(tmp, models_dir / "current")
    return name


@contextmanager
def eval_home(
    base: AppConfig,
    dataset: QADataset,
    *,
    embedder: Any,
    index_dir: Path | None,
    progress: bool = True,
) -> Iterator[AppConfig]:
    """A temporary RAGQA home with the file's contexts indexed (or `index_dir` linked); removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="ragqa-eval-"))
    try:
        paths = Paths(tmp)
        if index_dir is not None:
            index_dir = Path(index_dir).expanduser().resolve()
            if not (index_dir / "meta.json").is_file():
                raise EvalError(f"{index_dir} is not an index (no meta.json); build one with `ragqa ingest`")
            os.symlink(index_dir, paths.index_dir)
        else:
            if not dataset.documents:
                raise EvalError(
                    f"{dataset.path} has no contexts to index (plain JSONL with only `source`): pass --index DIR"
                )
            _index_contexts(base, dataset, tmp / "corpus", paths.index_dir, embedder, progress)
        (tmp / "models").mkdir()
        yield base.with_(paths=paths)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _index_contexts(
    cfg: AppConfig, dataset: QADataset, corpus: Path, index_dir: Path, embedder: Any, progress: bool
) -> None:
    from retrieval.ingest import ingest

    write_corpus(dataset, corpus)
    report = ingest(
        corpus,
        index_dir,
        embedder,
        progress=progress,
        **cfg.ingest_options(),
    )
    if report.skipped:
        raise EvalError(f"{len(report.skipped)} contexts could not be indexed: {report.skipped[:3]}")


# ---- answering -----------------------------------------------------------------------------------------------
ResultHook = Callable[[int, ExampleResult], None]


def answer_examples(
    qa: Any,
    examples: Sequence[QAExample],
    dataset: QADataset,
    *,
    k: int,
    depth: int,
    corpus_from_file: bool,
    progress: bool = True,
    desc: str = "questions",
    batch_size: int = 1,
    done: dict[int, ExampleResult] | None = None,
    on_result: ResultHook | None = None,
) -> list[ExampleResult]:
    """Ask every question through `qa` (a QAService) and score each answer, in the order of `examples`.

    `done` holds results already answered (by position; not asked again); `on_result(position, result)` is
    called as each new one completes (the journal appends it there).
    """
    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    results: dict[int, ExampleResult] = dict(done or {})
    pending = [i for i in range(len(examples)) if i not in results]
    bar = tqdm(total=len(examples), initial=len(results), desc=desc, unit="q", disable=not progress)

    def finish(i: int, result: ExampleResult) -> None:
        results[i] = result
        if on_result is not None:
            on_result(i, result)
        bar.update(1)

    try:
        ranked = (_ranked(qa, examples[i], dataset, depth, corpus_from_file) for i in pending)
        if batch_size == 1:
            for i, result in zip(pending, ranked, strict=True):
                finish(i, result if result.error else _asked_alone(qa, result, k))
        else:
            _answer_in_batches(qa, dict(zip(pending, ranked, strict=True)), k, batch_size, finish)
    finally:
        bar.close()
    return [results[i] for i in range(len(examples))]


def _ranked(
    qa: Any, example: QAExample, dataset: QADataset, depth: int, corpus_from_file: bool
) -> ExampleResult:
    """The example's result with the ranking of a `depth` retrieval scored (retrieval metrics), not answered."""
    from app.qa import QAError

    result = ExampleResult(example)
    try:
        ranking = qa.retrieve(example.question, (), depth)
    except QAError as e:
        result.error = str(e)
        return result
    result.ranking = [p.source for p in ranking]
    matcher = gold_matcher(example, dataset, corpus_from_file)
    if matcher is not None:
        result.gold_known = True
        result.first_gold_rank = M.first_relevant_rank([matcher(p) for p in ranking])
    return result


def _asked_alone(qa: Any, result: ExampleResult, k: int) -> ExampleResult:
    from app.qa import QAError

    try:
        _score_answer(result, qa.ask(result.example.question, k=k))
    except QAError as e:
        result.error = str(e)
    return result


def _answer_in_batches(
    qa: Any, ranked: dict[int, ExampleResult], k: int, batch_size: int, finish: ResultHook
) -> None:
    """Answer the ranked results without an error through `qa.ask_many`; the others finish as they are."""
    from app.qa import QAError

    for i, result in ranked.items():
        if result.error:
            finish(i, result)
    todo = [i for i, r in ranked.items() if not r.error]
    if not todo:
        return
    questions = [ranked[i].example.question for i in todo]
    for batch in qa.ask_many(questions, k=k, batch_size=batch_size):
        for j, asked in batch:
            result = ranked[todo[j]]
            if isinstance(asked, QAError):
                result.error = str(asked)
            else:
                _score_answer(result, asked)
            finish(todo[j], result)


def _score_answer(result: ExampleResult, asked: Any) -> None:
    e = result.example
    result.answer = asked.answer
    result.passages = list(asked.passages)
    result.cited, result.citation_mode = list(asked.cited), asked.citation_mode
    result.timings_ms = dict(asked.timings_ms)
    result.finished = asked.finished
    result.model_version = asked.model_version
    result.gated = "relevance_gate" in asked.generation
    result.scores = M.score_answer(asked.answer, e.answers, e.unanswerable)
    result.words = M.answer_words(asked.answer)
    if asked.citation_mode == "model" and not e.unanswerable:
        by_rank = {p.rank: p for p in asked.passages}
        result.citation_correct = any(
            M.contains_answer(by_rank[r].text, e.answers) for r in asked.cited if r in by_rank
        )


# ---- aggregation ----------------------------------------------------------------------------------------------
def nan_to_none(value: Any) -> Any:
    """NaN means "nothing to average"; JSON has no NaN, so reports carry null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def aggregate(results: Sequence[ExampleResult], depth: int = 10) -> dict[str, Any]:
    """All metrics of one run (see metrics.py for the definitions). NaN (nothing to average) becomes null."""
    ok = [r for r in results if r.error is None]
    answerable = [r for r in ok if not r.example.unanswerable]
    unanswerable = [r for r in ok if r.example.unanswerable]
    with_gold = [r for r in ok if r.gold_known]
    ranks = [r.first_gold_rank for r in with_gold]
    citing = [r for r in answerable if r.citation_correct is not None]
    answered = [r for r in answerable if not r.scores["abstained"]]
    out: dict[str, Any] = {
        "counts": {
            "questions": len(results),
            "answered_ok": len(ok),
            "errors": len(results) - len(ok),
            "answerable": len(answerable),
            "unanswerable": len(unanswerable),
            "with_gold_passage": len(with_gold),
        },
        "retrieval": {
            **{f"recall@{k}": M.recall_at_k(ranks, k) for k in RECALL_KS},
            "mrr": M.mean_reciprocal_rank(ranks),
            "recall_curve": [M.recall_at_k(ranks, k) for k in range(1, depth + 1)],
        },
        "answers": {
            "em": M.mean(r.scores["em"] for r in ok),
            "f1": M.mean(r.scores["f1"] for r in ok),
            "em_answerable": M.mean(r.scores["em"] for r in answerable),
            "f1_answerable": M.mean(r.scores["f1"] for r in answerable),
            "contains_gold_rate": M.mean(float(r.scores["contains"]) for r in answerable),
            "citation_rate": M.ratio(len(citing), len(answered)),
            "citation_correctness": M.mean(float(bool(r.citation_correct)) for r in citing),
            **M.abstention_scores([r.scores["abstained"] for r in ok], [r.example.unanswerable for r in ok]),
            "no_answer_accuracy": M.mean(r.scores["em"] for r in unanswerable),
            "mean_answer_words": M.mean(r.words for r in ok),
            "unfinished_rate": M.mean(float(not r.finished) for r in ok),
            "relevance_gated_rate": M.mean(float(r.gated) for r in ok),
        },
        "latency_ms": {
            f"{name}_p{q}": M.percentile([t for r in ok if (t := r.latency(name)) is not None], q)
            for name in ("retrieve", "first_token", "total")
            for q in (50, 95)
        },
    }
    return nan_to_none(out)


# ---- the whole run ------------------------------------------------------------------------------------------
@dataclass
class EvalRun:
    """What `run_eval` / `run_compare` produced: the report dict, the per-question results, the report folder."""

    report: dict[str, Any]
    results: list[ExampleResult]
    out_dir: Path


def _default_out_dir(cfg: AppConfig, name: str, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cfg.paths.home / "evals" / f"{stamp}-{name.split('.')[0]}-{tag}"


def _embedder_for(cfg: AppConfig, embedder: Any) -> Any:
    if embedder is not None:
        return embedder
    from retrieval.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(cfg.embedder)


def prepare(options: EvalOptions, base: AppConfig | None) -> tuple[AppConfig, QADataset, list[QAExample]]:
    """Load the config and the QA file, pick the subset; shared by eval, compare and the loop benchmark."""
    cfg = base or AppConfig.load()
    overrides = {
        "k": options.k,
        "max_new_tokens": options.max_new_tokens,
        "max_prompt_tokens": options.max_prompt_tokens,
    }
    cfg = eval_config(cfg.with_(**{k: v for k, v in overrides.items() if v is not None}), options.batch_size)
    if options.batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {options.batch_size}")
    dataset = load_qa(options.qa_path, options.fmt)
    return cfg, dataset, select_examples(dataset.examples, options.limit, options.seed)


def run_eval(
    options: EvalOptions,
    *,
    embedder: Any = None,
    base: AppConfig | None = None,
    write: bool = True,
    on_result: ResultHook | None = None,
) -> EvalRun:
    """`ragqa eval`: answer the selected questions with one model version, write the report files.

    `embedder` defaults to the configured sentence-transformer (tests pass a HashEmbedder); `base` to
    AppConfig.load() of RAGQA_HOME, whose registry provides the model. With `write`, the answers are journaled in
    the report folder as they complete and a rerun into it resumes; `on_result(position, result)` is called after
    each new answer is on disk.
    """
    from app.qa import QAService
    from evaluation.reports import write_eval_report

    cfg, dataset, examples = prepare(options, base)
    registry = ModelRegistry(cfg.paths.models_dir)
    version = resolve_version(registry, options.model)
    embedder = _embedder_for(cfg, embedder)
    depth = max(options.depth, cfg.k)
    out_dir = (
        Path(options.out_dir)
        if options.out_dir
        else _default_out_dir(cfg, Path(options.qa_path).name, version)
    )
    t0 = time.perf_counter()
    # once, so the journal's header and the report say the same
    settings = settings_info(cfg, options, embedder, registry, version)
    with (
        _journal(
            write, out_dir / JOURNAL, journal_options(cfg, options, embedder, registry, version, settings)
        ) as journal,
        eval_home(
            cfg, dataset, embedder=embedder, index_dir=options.index_dir, progress=options.progress
        ) as tmp,
    ):
        pin_version(tmp.paths.models_dir, registry, version)
        done = _resumed(journal, examples)
        qa = QAService(tmp, embedder=embedder)
        if len(done) < len(examples):
            qa.generator.current()  # load once, so the first question's latency is not the model load
        results = answer_examples(
            qa,
            examples,
            dataset,
            k=cfg.k,
            depth=depth,
            corpus_from_file=options.index_dir is None,
            progress=options.progress,
            batch_size=options.batch_size,
            done=done,
            on_result=_journaling(journal, on_result),
        )
    report = {
        "kind": "eval",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "dataset": dataset_info(dataset, examples, options),
        "model": {"version": version, "manifest": _manifest_summary(registry, version)},
        "settings": settings,
        "metrics": aggregate(results, depth),
        "resumed": len(done),
        "wall_s": round(time.perf_counter() - t0, 1),
        "definitions": DEFINITIONS,
    }
    if write:
        write_eval_report(report, results, out_dir)
    return EvalRun(report, results, out_dir)


def eval_config(cfg: AppConfig, batch_size: int) -> AppConfig:
    """The config the eval answers with: a batched eval resolves backend `auto` to transformers.

    `auto` serves with llama.cpp on a CPU, which answers one prompt at a time; transformers answers a whole batch
    in one generate call. Measured on the loaded 2-core Zen 4 box (load 4-12), 48 xquad-en questions: 1390 s one
    by one through llama.cpp, 222 s in batches of 16 through transformers bf16, the same F1 (0.079 / 0.077).
    A backend named in the config (or a version's manifest) is kept and answers one by one.
    """
    return cfg.with_(backend="transformers") if batch_size > 1 and cfg.backend == "auto" else cfg


def journal_options(
    cfg: AppConfig,
    options: EvalOptions,
    embedder: Any,
    registry: ModelRegistry,
    version: str,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What decides the answers of an eval: a resumed run must match all of it (evaluation/journal.py).
    `settings`: settings_info's, when the caller has it (the report then records the same)."""
    manifest = registry.get(version).manifest
    if settings is None:
        settings = settings_info(cfg, options, embedder, registry, version)
    return {
        "qa_path": str(Path(options.qa_path).expanduser().resolve()),
        "format": options.fmt,
        "limit": options.limit,
        "seed": options.seed,
        "model": version,
        "model_created_at": manifest.get("created_at"),
        **settings,
    }


# Options journals written before they were recorded, with the value their header implies: the eval config's
# backend when it named one (a batched eval turns `auto` into transformers); the trimming of prompts over the
# limit as it was before TRIM_ALGORITHM was recorded (v1), where there was a limit.
IMPLIED_OPTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "serving_backend": lambda old: old.get("backend") if old.get("backend") != "auto" else None,
    "trim_algorithm": lambda old: None if old.get("prompt_token_limit") is None else "v1",
}


@contextmanager
def _journal(write: bool, path: Path, options: dict[str, Any]) -> Iterator[AnswerJournal | None]:
    if not write:
        yield None
        return
    with AnswerJournal(path, options, implied=IMPLIED_OPTIONS) as journal:
        yield journal


def _resumed(journal: AnswerJournal | None, examples: Sequence[QAExample]) -> dict[int, ExampleResult]:
    """The journal's answers as results; refused when a position holds another question (the file changed)."""
    if journal is None:
        return {}
    done = {}
    for n, record in journal.done.items():
        if n >= len(examples) or (record["qid"], record["question"]) != (
            examples[n].qid,
            examples[n].question,
        ):
            raise EvalError(
                f"{journal.path} answers other questions than the QA file now holds (question {n}): pass "
                "another --out folder"
            )
        done[n] = ExampleResult.from_record(examples[n], record)
    return done


def _journaling(journal: AnswerJournal | None, then: ResultHook | None) -> ResultHook | None:
    if journal is None:
        return then

    def hook(n: int, result: ExampleResult) -> None:
        journal.append(n, result.to_record())
        if then is not None:
            then(n, result)

    return hook


def dataset_info(dataset: QADataset, examples: Sequence[QAExample], options: EvalOptions) -> dict[str, Any]:
    return {
        "path": str(dataset.path),
        "format": dataset.format,
        "questions_in_file": len(dataset.examples),
        "questions_evaluated": len(examples),
        "unanswerable_evaluated": sum(e.unanswerable for e in examples),
        "documents": len(dataset.documents),
        "limit": options.limit,
        "seed": options.seed,
    }


def serving_backend(cfg: AppConfig, registry: ModelRegistry, version: str) -> str:
    """The backend that answers for `version` (its manifest's server, else the config's, `auto` resolved), as the
    QA service's generator will choose it."""
    from app.generator import Generator

    generator = Generator(
        registry, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit, backend=cfg.backend, config=cfg
    )
    return generator.expected_backend(registry.get(version))


def _prompt_token_limit(cfg: AppConfig, backend: str) -> int | None:
    """The prompt limit the answers get (app/prompt_limit.py), for the backend that serves them."""
    from app.prompt_limit import prompt_token_limit, serves_on_cpu
    from model_store.hardware import cuda_state

    return prompt_token_limit(cfg.max_prompt_tokens, serves_on_cpu(backend, cuda_state()[0]))


def settings_info(
    cfg: AppConfig, options: EvalOptions, embedder: Any, registry: ModelRegistry, version: str
) -> dict[str, Any]:
    from retrieval.passage_trim import TRIM_ALGORITHM

    backend = serving_backend(cfg, registry, version)
    limit = _prompt_token_limit(cfg, backend)
    return {
        "k": cfg.k,
        "retrieval_depth": max(options.depth, cfg.k),
        "max_new_tokens": cfg.max_new_tokens,
        "max_prompt_tokens": cfg.max_prompt_tokens,
        "prompt_token_limit": limit,
        # how prompts over the limit are trimmed decides the answers; none are trimmed without a limit
        **({"trim_algorithm": TRIM_ALGORITHM} if limit is not None else {}),
        "repetition_penalty": cfg.repetition_penalty,
        "backend": cfg.backend,
        "serving_backend": backend,
        "dtype": cfg.dtype,
        "batch_size": options.batch_size,
        "embedder": getattr(embedder, "name", type(embedder).__name__),
        "index": str(options.index_dir) if options.index_dir else "the file's contexts (temporary)",
        "chunk_tokens": cfg.chunk_tokens,
        "chunk_overlap": cfg.chunk_overlap,
    }


def _manifest_summary(registry: ModelRegistry, version: str) -> dict[str, Any]:
    manifest = registry.get(version).manifest
    keep = ("kind", "stage", "parent", "base_model", "run_id", "created_at", "feedback_snapshot", "source")
    return {k: manifest[k] for k in keep if k in manifest}


DEFINITIONS = {
    "normalisation": "SQuAD official: lowercase, strip punctuation, drop a/an/the, collapse whitespace; "
    "citation markers like [1] are removed from answers first",
    "em_f1": "max over gold answers; unanswerable questions score 1 iff the model abstained (SQuAD 2.0); "
    "an answerable question the model abstained on scores 0",
    "abstained": "the answer is empty or its first sentence says the passages lack the answer "
    "(retrieval.prompt.NO_ANSWER or a variant in evaluation.metrics.ABSTENTION_PATTERNS)",
    "contains_gold_rate": "answerable questions whose answer contains a normalised gold answer",
    "citation_rate": "answered (not abstained) answerable questions whose answer cites a passage as [n]",
    "citation_correctness": "of those, the share where a cited passage contains a gold answer",
    "abstention_precision_recall": "abstaining treated as a detector of unanswerable questions",
    "recall@k_mrr": "the gold context (its file, the `source`, or a chunk inside it) among the top k of a "
    "separate retrieval of `retrieval_depth` passages; MRR counts a miss as 0",
    "mean_answer_words": "whitespace-separated words, citation markers removed",
    "latency": "from QAService timings: retrieve, first_token and total are measured from the start of the "
    "request; the model is loaded before the first question. Batched answers (batch_size > 1) end together, so "
    "they have no first_token or total: their timings are retrieve and generate_batch (the batch's generate call)",
}


# ---- compare -----------------------------------------------------------------------------------------------------
def run_compare(
    version_a: str,
    version_b: str,
    options: EvalOptions,
    *,
    rm: Path | None = None,
    embedder: Any = None,
    base: AppConfig | None = None,
    max_differences: int = 20,
    write: bool = True,
) -> EvalRun:
    """`ragqa compare A B`: the same questions and the same retrieval through two versions, side by side.

    The head-to-head judge is the reward model (`rm`, else the one the registry records) when there is one,
    otherwise token F1 against the gold answers.
    """
    from app.qa import QAService
    from evaluation.reports import write_compare_report
    from model_store.reward import describe, load_scorer

    cfg, dataset, examples = prepare(options, base)
    registry = ModelRegistry(cfg.paths.models_dir)
    for name in (version_a, version_b):
        resolve_version(registry, name)
    embedder = _embedder_for(cfg, embedder)
    depth = max(options.depth, cfg.k)
    tag = f"{version_a}-vs-{version_b}"
    out_dir = (
        Path(options.out_dir) if options.out_dir else _default_out_dir(cfg, Path(options.qa_path).name, tag)
    )
    t0 = time.perf_counter()
    results: dict[str, list[ExampleResult]] = {}
    with eval_home(
        cfg, dataset, embedder=embedder, index_dir=options.index_dir, progress=options.progress
    ) as tmp:
        qa = QAService(tmp, embedder=embedder)
        for name in (version_a, version_b):
            pin_version(tmp.paths.models_dir, registry, name)
            qa.generator.current()  # the generator follows the private `current`: load before timing
            header = journal_options(cfg, options, embedder, registry, name)
            with _journal(write, out_dir / f"answers-{name}.jsonl", header) as journal:
                results[name] = answer_examples(
                    qa,
                    examples,
                    dataset,
                    k=cfg.k,
                    depth=depth,
                    corpus_from_file=options.index_dir is None,
                    progress=options.progress,
                    desc=name,
                    batch_size=options.batch_size,
                    done=_resumed(journal, examples),
                    on_result=_journaling(journal, None),
                )
    scorer = load_scorer(rm, registry, required=rm is not None)
    rewards = reward_scores(scorer, results, progress=options.progress) if scorer else None
    report = {
        "kind": "compare",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": [version_a, version_b],
        "dataset": dataset_info(dataset, examples, options),
        # both versions are served by the same config: their backend (and prompt limit) differs only when one
        # has a GGUF and the other not, or a manifest names a server; each journal header records its own
        "settings": settings_info(cfg, options, embedder, registry, version_a),
        "reward_model": describe(scorer),
        "metrics": {name: aggregate(rs, depth) for name, rs in results.items()},
        "win_rate": win_rate(results[version_a], results[version_b], rewards, (version_a, version_b)),
        "f1_ci": {name: nan_to_none(f1_ci(rs)) for name, rs in results.items()},
        "f1_difference": nan_to_none(f1_difference(results[version_b], results[version_a])),
        "differences": differences(results[version_a], results[version_b], rewards, max_differences),
        "wall_s": round(time.perf_counter() - t0, 1),
        "definitions": {
            **DEFINITIONS,
            "f1_ci": "95% percentile-bootstrap interval of the mean F1 (2000 resamples of the questions, seed 0)",
            "f1_difference": "mean F1 of B minus A over the questions both answered, with its 95% paired "
            "bootstrap interval (each resampled question brings both answers' F1; 2000 resamples, seed 0)",
            "win_rate": "share of questions (both answered) where B's answer is judged better than A's, ties "
            "counted half; the judge is the reward model's score of (prompt with passages, answer) when one is "
            "available, else token F1 against the gold answers",
        },
    }
    if write:
        write_compare_report(report, results, out_dir)
    return EvalRun(report, [r for rs in results.values() for r in rs], out_dir)


def f1_ci(results: Sequence[ExampleResult]) -> dict[str, Any]:
    """Mean F1 of the answered questions with its bootstrap 95% CI."""
    return M.bootstrap_mean_ci([r.scores["f1"] for r in results if r.error is None])


def f1_difference(a: Sequence[ExampleResult], b: Sequence[ExampleResult]) -> dict[str, Any]:
    """Mean F1 of a minus b, paired over the questions (same positions) both answered, with its 95% CI."""
    both = [(ra, rb) for ra, rb in zip(a, b, strict=True) if ra.error is None and rb.error is None]
    return M.paired_bootstrap_ci([ra.scores["f1"] for ra, _ in both], [rb.scores["f1"] for _, rb in both])


def reward_scores(
    scorer: Any, results: dict[str, list[ExampleResult]], progress: bool = False
) -> dict[str, list[float | None]]:
    """The reward model's score of each answer given its prompt (question + the passages it saw); None on error."""
    from retrieval.prompt import render_prompt

    out: dict[str, list[float | None]] = {}
    for name, rs in results.items():
        ok = [r for r in rs if r.error is None]
        scores = scorer.score(
            [render_prompt(r.example.question, r.passages) for r in ok],
            [r.answer for r in ok],
            progress=progress,
        )
        by_id = {id(r): s for r, s in zip(ok, scores, strict=True)}
        out[name] = [by_id.get(id(r)) for r in rs]
    return out


def win_rate(
    a: list[ExampleResult],
    b: list[ExampleResult],
    rewards: dict[str, list[float | None]] | None,
    names: tuple[str, str],
) -> dict[str, Any]:
    """Head-to-head of B over A on the questions both answered: by reward when given, else by F1."""
    both = [i for i, (ra, rb) in enumerate(zip(a, b, strict=True)) if ra.error is None and rb.error is None]
    if rewards is not None:
        sa = [float(rewards[names[0]][i]) for i in both]
        sb = [float(rewards[names[1]][i]) for i in both]
        judge = "reward model"
    else:
        sa = [a[i].scores["f1"] for i in both]
        sb = [b[i].scores["f1"] for i in both]
        judge = "F1"
    return {"judge": judge, **nan_to_none(M.head_to_head(sa, sb))}


def differences(
    a: list[ExampleResult],
    b: list[ExampleResult],
    rewards: dict[str, list[float | None]] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Questions where the two answers differ (after normalisation), largest F1 (then reward) gap first."""
    rows = []
    names = list(rewards) if rewards else []
    for i, (ra, rb) in enumerate(zip(a, b, strict=True)):
        if ra.error or rb.error or M.normalize_answer(ra.answer) == M.normalize_answer(rb.answer):
            continue
        reward_diff = None
        if rewards is not None:
            ya, yb = rewards[names[0]][i], rewards[names[1]][i]
            reward_diff = None if ya is None or yb is None else yb - ya
        rows.append(
            {
                "id": ra.example.qid,
                "question": ra.example.question,
                "answers": list(ra.example.answers),
                "answer_a": ra.answer,
                "answer_b": rb.answer,
                "f1_a": ra.scores["f1"],
                "f1_b": rb.scores["f1"],
                "reward_diff": reward_diff,
            }
        )
    rows.sort(key=lambda d: (abs(d["f1_b"] - d["f1_a"]), abs(d["reward_diff"] or 0.0)), reverse=True)
    return rows[:limit]


# ---- eval-rm -------------------------------------------------------------------------------------------------------
@dataclass
class RMOptions:
    pairs_path: Path
    rm: Path | None = None  # None: the reward model the registry records
    fmt: str | None = None
    limit: int | None = None
    seed: int = 0
    out_dir: Path | None = None
    batch_size: int = 8
    max_length: int = 1024
    progress: bool = True


RM_DEFINITIONS = {
    "accuracy": "pairs where score(chosen) > score(rejected) (ties count as wrong)",
    "margin": "score(chosen) - score(rejected)",
    "length": "answer length in whitespace-separated words; buckets are chosen minus rejected",
    "length_bias": "rm_prefers_longer_rate (the RM scores the longer answer higher) next to chosen_longer_rate "
    "(the human label picked the longer one), over pairs of different length",
    "scoring": "the RM tokenizer's chat template over prompt + answer (HH text form without a template), "
    "left-truncated to max_length tokens",
    "by_abstention": "accuracy over the pairs where the chosen answer is the abstention sentence (won), where the "
    "rejected one is (lost), and the rest (neither); right where it lost and wrong where it won = the RM learnt "
    "'abstaining is worse' rather than when it is right",
}


def rm_pair_metrics(
    pairs: Sequence[Any], chosen: Sequence[float], rejected: Sequence[float]
) -> dict[str, Any]:
    """`M.pair_metrics` of a reward model's scores of `pairs` (PreferencePair): lengths in words, abstention outcomes."""
    return M.pair_metrics(
        chosen,
        rejected,
        [len(p.chosen.split()) for p in pairs],
        [len(p.rejected.split()) for p in pairs],
        [M.abstention_outcome(p.chosen, p.rejected) for p in pairs],
    )


def run_eval_rm(options: RMOptions, *, base: AppConfig | None = None, write: bool = True) -> dict[str, Any]:
    """`ragqa eval-rm`: pair accuracy, margins and accuracy by length difference of a reward model."""
    from evaluation.formats import load_pairs
    from evaluation.reports import write_rm_report
    from model_store.reward import RewardScorer, default_reward_model

    cfg = base or AppConfig.load()
    fmt, pairs = load_pairs(options.pairs_path, options.fmt)
    pairs = select_examples(pairs, options.limit, options.seed)  # load_pairs never returns none
    path = options.rm or default_reward_model(ModelRegistry(cfg.paths.models_dir))
    if path is None:
        raise EvalError(
            "no reward model given and none recorded in the model registry: pass --rm PATH "
            "(a reward model folder written by `ragqa retrain`, or any AutoModelForSequenceClassification folder)"
        )
    t0 = time.perf_counter()
    scorer = RewardScorer(path, max_length=options.max_length, batch_size=options.batch_size)
    prompts = [list(p.prompt) for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs], progress=options.progress)
    rejected = scorer.score(prompts, [p.rejected for p in pairs], progress=options.progress)
    metrics = rm_pair_metrics(pairs, chosen, rejected)
    report: dict[str, Any] = {
        "kind": "eval-rm",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pairs_file": str(Path(options.pairs_path).expanduser()),
        "format": fmt,
        "limit": options.limit,
        "seed": options.seed,
        "reward_model": {"path": str(scorer.path), "max_length": options.max_length},
        "metrics": nan_to_none(metrics),
        "wall_s": round(time.perf_counter() - t0, 1),
        "definitions": RM_DEFINITIONS,
    }
    if write:
        name = f"rm-{Path(options.pairs_path).name.split('.')[0]}"
        out_dir = Path(options.out_dir) if options.out_dir else _default_out_dir(cfg, name, scorer.path.name)
        write_rm_report(report, [c - r for c, r in zip(chosen, rejected, strict=True)], out_dir)
        report["out_dir"] = str(out_dir)
    return report
