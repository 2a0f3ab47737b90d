"""Answer questions: retrieve passages, render THE prompt, generate, find citations. No Gradio here.

The UI, the CLI, the simulated annotator and the evaluation all go through `QAService`, so what is measured and
what is collected as feedback is exactly what users see.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from app.config import AppConfig
from app.errors import AppError
from app.generator import GenerationError, GenerationStats, Generator, ServedModel
from app.prompt_limit import prompt_token_limit
from app.relevance import best_sentence_cosine
from feedback_store.records import NewCandidate
from model_store.registry import ModelRegistry
from retrieval.followup import choose_query, joined_query, looks_like_follow_up, previous_question
from retrieval.passage_trim import trim_passages
from retrieval.prompt import NO_ANSWER, fit_passages, parse_citations, render_prompt
from retrieval.types import Passage

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Words too common to show that an answer came from a passage.
_STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were what when where "
    "which who why will with you your i do does did not no yes can".split()
)


# The passage tokens a prompt keeps under `max_prompt_tokens` however long the conversation before it is.
MIN_PASSAGE_TOKENS = 160

# The relevance gate's threshold for the default embedder (all-MiniLM-L6-v2; config `min_relevance`), on its score
# app.relevance.sentence_relevance (the best cosine between the question and a sentence of the passages found):
# the highest value (0.01 steps) that gates none of the 2,263 answerable questions of squad2-dev-half's training
# articles with their article indexed (benchmarks/relevance_gate.py, docs/results/relevance_gate/); it gates 3.7%
# of those questions with their article left out (another Wikipedia article is a hard case). No budget for
# answerable ones: squad2's questions paraphrase their sentence, and a user's short how-to question scores lower
# (the chunk-level gate chosen before with a 1% budget refused 3-4 of 20 questions about the bundled guide,
# e.g. "How do I add my documents?"). On the guide: its questions 0.34-0.84, trivia 0.15-0.21.
# Other embedders put cosines on another scale: with any embedder but the default one the gate is off unless
# configured.
DEFAULT_MIN_RELEVANCE = 0.22


def relevance_floor(configured: float | None, embedder_name: str | None) -> tuple[float, str]:
    """The relevance gate's threshold (0: off) for config `min_relevance` and the embedder's name, and why."""
    from retrieval.embedder import DEFAULT_MODEL_NAME

    if configured is not None:
        return configured, (
            "off: min_relevance 0 in config.yaml" if configured == 0 else "min_relevance in config.yaml"
        )
    if embedder_name == DEFAULT_MODEL_NAME:
        return DEFAULT_MIN_RELEVANCE, f"auto: calibrated for {DEFAULT_MODEL_NAME}"
    return (
        0.0,
        f"auto: off with the embedder {embedder_name} (the threshold is calibrated for {DEFAULT_MODEL_NAME})",
    )


class QAError(AppError, ValueError):
    """The question cannot be answered as asked (empty, too long, nothing ingested...): the message says why."""


@dataclass
class AskResult:
    answer: str
    passages: list[Passage]
    cited: list[int]  # ranks of the passages the answer cites
    citation_mode: str  # "model": the model wrote [n]; "inferred": matched by word overlap; "none"
    model_version: str
    timings_ms: dict[str, float]
    finished: bool = True  # False when cut by max_new_tokens or the time limit
    backend: str = ""  # the backend that wrote the answer (transformers, llamacpp, openai)
    generation: dict[str, Any] = field(default_factory=dict)  # GenerationStats: tokens, decode tokens/s
    # The text the passages were searched with (the question, or joined with the previous one for a follow-up):
    # what the sources pane's relevance is measured against, as the gate's is. "" = the question itself.
    search_query: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "sources": [asdict(p) for p in self.passages],
            "cited": self.cited,
            "citation_mode": self.citation_mode,
            "model_version": self.model_version,
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            "backend": self.backend,
            "generation": self.generation,
        }


@dataclass
class Candidate:
    """One sampled alternative answer, with what is needed to reproduce and rank it."""

    text: str
    model_version: str
    sampling: dict[str, Any]
    latency_ms: float
    cited: list[int] = field(default_factory=list)

    def to_record(self, label: str | None = None) -> NewCandidate:
        """The feedback store's record of this candidate (shown to the rater as `label`)."""
        return NewCandidate(self.text, self.model_version, self.sampling, self.latency_ms, label)


class Retrieved(NamedTuple):
    """The passages for a question, and the relevance gate's score of them (app.relevance.sentence_relevance: the
    best cosine between a reading of the question and a sentence of the passages; NaN when the gate is off)."""

    passages: list[Passage]
    best_cosine: float
    query: str = ""  # the text searched: the question, or joined with the previous one (a follow-up)


class PreparedQuestion(NamedTuple):
    """A question of `ask_many` ready for generation: its prompt, the passages it kept, its retrieval time."""

    index: int  # position in the asked list
    messages: list[dict[str, str]]
    passages: list[Passage]
    retrieve_ms: float


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def infer_citations(answer: str, passages: Sequence[Passage], min_overlap: float = 0.5) -> list[int]:
    """Ranks of passages that contain most of the content words of one of the answer's sentences, best first.

    Small models often state a passage's fact without writing [n], and often add a made-up sentence after it; a
    sentence-level match makes the source of the supported sentence visible anyway. The result is labelled
    "inferred" so nobody mistakes it for the model's own citation.
    """
    if not answer.strip() or answer.strip() == NO_ANSWER:
        return []
    sentences = [_content_words(s) for s in _SENTENCE.split(answer)]
    sentences = [w for w in sentences if len(w) >= 2]
    scored = []
    for p in passages:
        passage_words = _content_words(p.text)
        # At least two shared content words: one common word ("teams") proves nothing.
        best = max(
            (len(w & passage_words) / len(w) for w in sentences if len(w & passage_words) >= 2), default=0.0
        )
        if best >= min_overlap:
            scored.append((best, -p.rank, p.rank))
    return [rank for _o, _r, rank in sorted(scored, reverse=True)[:2]]


def citations_for(answer: str, passages: Sequence[Passage]) -> tuple[list[int], str]:
    cited = parse_citations(answer, len(passages))
    if cited:
        return cited, "model"
    inferred = infer_citations(answer, passages)
    return inferred, ("inferred" if inferred else "none")


def plain_history(history: Sequence[Any]) -> list[dict[str, str]]:
    """Normalise chat history to `{"role", "content": str}` (Gradio 6 sends content as a list of parts)."""
    out = []
    for m in history or ():
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            content = " ".join(
                part.get("text", "") if isinstance(part, dict) else str(part) for part in content
            ).strip()
        if role in ("user", "assistant") and isinstance(content, str) and content.strip():
            out.append({"role": role, "content": content})
    return out


def retrieval_query(question: str, history: Sequence[dict[str, str]]) -> str:
    """The follow-up reading of a question: searched together with the previous question. `retrieve` uses it
    only when it matches the index clearly better than the question alone (retrieval/followup.py)."""
    return joined_query(question, previous_question(history))


class QAService:
    """Wires retrieval, the prompt and the generator together. One per process; thread-safe."""

    def __init__(self, config: AppConfig, *, embedder: Any = None) -> None:
        self.config = config
        self.registry = ModelRegistry(config.paths.models_dir)
        self.generator = Generator(
            self.registry,
            dtype=config.dtype,
            load_in_4bit=config.load_in_4bit,
            backend=config.backend,
            config=config,
        )
        self._embedder = embedder
        self._retriever: Any = None
        self._index_stamp: float | None = None
        self._lock = threading.Lock()

    # ---- validation --------------------------------------------------------------------------------
    def check_question(self, question: str) -> str:
        q = (question or "").strip()
        if not q:
            raise QAError("the question is empty: type a question about your documents")
        try:
            q.encode("utf-8")
        except (
            UnicodeEncodeError
        ) as e:  # a lone surrogate pasted in a browser: the tokenizer would crash on it
            raise QAError(
                "the question contains characters that are not valid Unicode text; retype it"
            ) from e
        if len(q) > self.config.max_question_chars:
            raise QAError(
                f"the question is too long ({len(q)} characters); please shorten it to at most "
                f"{self.config.max_question_chars} characters"
            )
        return q

    def warm_up(self) -> None:
        """Load the embedder, the index and the current model now, so the first answer is not slowed by it."""
        self.retriever().search("warm up", k=1)
        try:
            self.generator.current()
        except GenerationError as e:
            raise QAError(str(e)) from e

    # ---- retrieval ---------------------------------------------------------------------------------
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                from retrieval.embedder import SentenceTransformerEmbedder

                self._embedder = SentenceTransformerEmbedder(self.config.embedder)
            return self._embedder

    def retriever(self) -> Any:
        """The hybrid retriever, reopened when `ragqa ingest` has rebuilt the index since it was opened."""
        from retrieval.errors import RetrievalError
        from retrieval.index import HybridIndex
        from retrieval.retriever import Retriever

        meta = self.config.paths.index_dir / "meta.json"
        stamp = meta.stat().st_mtime if meta.exists() else None
        embedder = self.embedder()
        with self._lock:
            if self._retriever is None or stamp != self._index_stamp:
                try:
                    index = HybridIndex.open(self.config.paths.index_dir, embedder)
                except RetrievalError as e:
                    raise QAError(str(e)) from e
                self._retriever = Retriever(index, embedder)
                self._index_stamp = stamp
            return self._retriever

    def retrieve(
        self, question: str, history: Sequence[dict[str, str]] = (), k: int | None = None
    ) -> list[Passage]:
        """The passages for `question`: searched alone, or with the previous question when it is a follow-up.

        Only the search query changes; the prompt still carries the whole conversation (build_prompt).
        """
        return self.retrieve_scored(question, history, k).passages

    def retrieve_scored(
        self, question: str, history: Sequence[dict[str, str]] = (), k: int | None = None
    ) -> Retrieved:
        """`retrieve`, and how close the index comes to the question (the relevance gate reads it)."""
        retriever = self.retriever()
        if not question.strip() or len(retriever.index) == 0:
            # its own empty-input answer
            return Retrieved(retriever.search(question, k=k or self.config.k), float("-inf"), question)
        previous = previous_question(history)
        choice = choose_query(retriever, question, previous)
        k = k or self.config.k
        passages = retriever.search_with_vector(choice.query, choice.vector, k=k)
        if self.min_relevance() <= 0:  # the gate is off: its score costs the sentences' embeddings, skip it
            return Retrieved(passages, float("nan"), choice.query)
        embedder = self.embedder()
        alone = choice.alone_vector if choice.alone_vector is not None else embedder.encode_query(question)
        # In a conversation either reading may be what the documents are about: the question alone, or joined
        # with the previous one. The joined reading matches whatever the previous question was about, so it
        # counts only for a question that refers back ("and how tall is it?"). A self-contained one ("How many
        # moons does Mars have?" right after a question about model versions) is judged alone, over what it
        # finds alone: the joined search's passages are the previous topic's, and a question's form alone ("How
        # many ... does ... have?") can come close to one of their sentences.
        if previous and looks_like_follow_up(question):
            joined = choice.joined_vector
            if joined is None:
                joined = embedder.encode_query(joined_query(question, previous))
            score = best_sentence_cosine(embedder, [alone, joined], passages)
            return Retrieved(passages, score, choice.query)
        found_alone = (
            passages if choice.query == question else retriever.search_with_vector(question, alone, k=k)
        )
        return Retrieved(passages, best_sentence_cosine(embedder, [alone], found_alone), choice.query)

    def min_relevance(self) -> float:
        """The relevance gate's threshold in force (0: off), for the embedder actually loaded."""
        return relevance_floor(self.config.min_relevance, getattr(self.embedder(), "name", None))[0]

    def gated(self, retrieved: Retrieved) -> bool:
        """True when passages were found but none is close to the question: answer "not in the documents".

        Small models asked anyway answer famous facts from their own knowledge whatever the passages say, with a
        made-up citation. (An empty index is not gated: nothing is indexed yet, which the prompt says.)
        """
        floor = self.min_relevance()
        # -inf: no sentence of 3+ words to compare with (not a measured distance); NaN: the gate is off
        best = retrieved.best_cosine
        return floor > 0 and bool(retrieved.passages) and math.isfinite(best) and best < floor

    def _gated_result(self, model: ServedModel, retrieved: Retrieved, timings: dict[str, float]) -> AskResult:
        """The answer without asking the model: the abstention sentence, the passages found still shown."""
        generation = {
            "relevance_gate": {
                "best_cosine": round(retrieved.best_cosine, 4),
                "min_relevance": self.min_relevance(),
            },
            "finish_reason": "stop",
        }
        return AskResult(
            NO_ANSWER,
            retrieved.passages,
            [],
            "none",
            model.version,
            timings,
            True,
            model.backend,
            generation,
            retrieved.query,
        )

    # ---- prompting ---------------------------------------------------------------------------------
    def build_prompt(
        self,
        model: ServedModel,
        question: str,
        passages: list[Passage],
        history: Sequence[dict[str, str]],
    ) -> tuple[list[dict[str, str]], list[Passage]]:
        """Fit the best passages into the model's window with room for the answer, then render the prompt."""
        budget = model.context_window - self.config.max_new_tokens
        kept = fit_passages(question, passages, history, model.count_tokens, budget)
        if passages and not kept:
            raise QAError("the question and conversation are too long for the model's context window")
        limit = prompt_token_limit(self.config.max_prompt_tokens, model.on_cpu)
        if (
            limit is not None
            and limit < budget
            and model.count_tokens(render_prompt(question, kept, history)) > limit
        ):
            # A long conversation may take the whole limit: the passages keep MIN_PASSAGE_TOKENS however long it is
            # (a slower first token beats an answer without evidence).
            floor = model.count_tokens(render_prompt(question, [], history)) + MIN_PASSAGE_TOKENS
            trimmed = trim_passages(
                question, kept, history, model.count_tokens, min(budget, max(limit, floor))
            )
            kept = trimmed or kept[:1]  # not one sentence fits: the best passage, as fit_passages allows
        return render_prompt(question, kept, history), kept

    # ---- answering ---------------------------------------------------------------------------------
    def stream(
        self, question: str, history: Sequence[Any] = (), k: int | None = None
    ) -> Iterator[tuple[str, Any]]:
        """Yield ("sources", passages), then ("token", text) pieces, then ("done", AskResult)."""
        q = self.check_question(question)
        turns = plain_history(history)
        t0 = time.perf_counter()
        retrieved = self.retrieve_scored(q, turns, k)
        t_retrieve = time.perf_counter()
        try:
            model = self.generator.current()
        except GenerationError as e:
            raise QAError(str(e)) from e
        # The prompt is built even when the gate answers: the passages shown and stored are the ones a Regenerate
        # prompt (built from them again) will carry, trimmed to the prompt limit as the model would read them.
        messages, passages = self.build_prompt(model, q, retrieved.passages, turns)
        if self.gated(retrieved):
            yield "sources", passages
            yield "token", NO_ANSWER
            end = time.perf_counter()
            timings = {
                "retrieve": (t_retrieve - t0) * 1000,
                "first_token": (end - t0) * 1000,
                "total": (end - t0) * 1000,
            }
            yield "done", self._gated_result(model, retrieved._replace(passages=passages), timings)
            return
        yield "sources", passages
        pieces: list[str] = []
        first_token: float | None = None
        stats = GenerationStats()
        try:
            for piece in model.stream(
                messages,
                max_new_tokens=self.config.max_new_tokens,
                timeout_s=self.config.generation_timeout_s,
                repetition_penalty=self.config.repetition_penalty,
                stats=stats,
            ):
                if first_token is None:
                    first_token = time.perf_counter()
                pieces.append(piece)
                yield "token", piece
        except GenerationError as e:
            raise QAError(str(e)) from e
        end = time.perf_counter()
        timings = {
            "retrieve": (t_retrieve - t0) * 1000,
            "first_token": ((first_token or end) - t0) * 1000,
            "total": (end - t0) * 1000,
        }
        answer = "".join(pieces).strip()
        result = self._result(model, answer, passages, timings, stats.finish_reason, stats.to_json())
        result.search_query = retrieved.query
        yield "done", result

    def _result(
        self,
        model: ServedModel,
        answer: str,
        passages: list[Passage],
        timings: dict[str, float],
        finish_reason: str,
        generation: dict[str, Any],
    ) -> AskResult:
        """The AskResult of a generated answer: its citations found, its end recorded (ask and ask_many)."""
        cited, mode = citations_for(answer, passages)
        finished = finish_reason == "stop"
        return AskResult(
            answer, passages, cited, mode, model.version, timings, finished, model.backend, generation
        )

    def ask(self, question: str, history: Sequence[Any] = (), k: int | None = None) -> AskResult:
        result = None
        for kind, value in self.stream(question, history, k):
            if kind == "done":
                result = value
        assert result is not None
        return result

    def ask_many(
        self, questions: Sequence[str], k: int | None = None, batch_size: int = 16
    ) -> Iterator[list[tuple[int, AskResult | QAError]]]:
        """Greedy answers to many single-turn questions, `batch_size` prompts per generate call.

        Each answer is the one `ask` gives (the same retrieval, prompt and post-processing) up to the backend's
        batching: transformers pads the prompts on the left, the other backends answer one by one. The prompts
        are sorted by length first, so a batch pads little. Yields, after each batch, (index in `questions`,
        result or the QAError that question got); questions refused or gated (`gated`) before generation come
        first.
        Timings: `retrieve` per question and `generate_batch`, the whole batch's generate call (no first-token
        or total latency: the answers of a batch end together).
        """
        if batch_size < 1:
            raise QAError(f"the batch size must be at least 1, got {batch_size}")
        try:
            model = self.generator.current()
        except GenerationError as e:
            raise QAError(str(e)) from e
        prepared, refused = self._prepare_many(model, questions, k)
        if refused:
            yield refused
        prepared.sort(key=lambda item: model.count_tokens(item.messages))
        for start in range(0, len(prepared), batch_size):
            yield self._answer_batch(model, prepared[start : start + batch_size])

    def _prepare_many(
        self, model: ServedModel, questions: Sequence[str], k: int | None
    ) -> tuple[list[PreparedQuestion], list[tuple[int, AskResult | QAError]]]:
        """Each question retrieved for and prompted as `ask` does; (index, QAError) of those refused and
        (index, AskResult) of those the relevance gate answers without the model."""
        prepared: list[PreparedQuestion] = []
        refused: list[tuple[int, AskResult | QAError]] = []
        for i, question in enumerate(questions):
            t0 = time.perf_counter()
            try:
                q = self.check_question(question)
                retrieved = self.retrieve_scored(q, (), k)
                retrieve_ms = (time.perf_counter() - t0) * 1000
                messages, kept = self.build_prompt(model, q, retrieved.passages, ())
                if self.gated(retrieved):  # the passages as `stream` shows them (see there)
                    shown = retrieved._replace(passages=kept)
                    refused.append((i, self._gated_result(model, shown, {"retrieve": retrieve_ms})))
                    continue
            except QAError as e:
                refused.append((i, e))
                continue
            prepared.append(PreparedQuestion(i, messages, kept, retrieve_ms))
        return prepared, refused

    def _answer_batch(
        self, model: ServedModel, batch: list[PreparedQuestion]
    ) -> list[tuple[int, AskResult | QAError]]:
        t0 = time.perf_counter()
        try:
            answers = model.generate_batch(
                [item.messages for item in batch],
                max_new_tokens=self.config.max_new_tokens,
                timeout_s=self.config.generation_timeout_s,
                repetition_penalty=self.config.repetition_penalty,
            )
        except GenerationError as e:
            return [(item.index, QAError(str(e))) for item in batch]
        batch_ms = (time.perf_counter() - t0) * 1000
        out: list[tuple[int, AskResult | QAError]] = []
        for item, g in zip(batch, answers, strict=True):
            generation = {
                "backend": model.backend,
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
                "finish_reason": g.finish_reason,
                "batch_size": len(batch),
            }
            timings = {"retrieve": item.retrieve_ms, "generate_batch": batch_ms}
            out.append(
                (item.index, self._result(model, g.text, item.passages, timings, g.finish_reason, generation))
            )
        return out

    def candidates(
        self,
        question: str,
        passages: list[Passage],
        history: Sequence[Any] = (),
        n: int | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        """Sample `n` alternative answers for the same question and the same passages the user saw."""
        q = self.check_question(question)
        n = n or self.config.num_candidates
        if not 1 <= n <= 4:  # 1: Regenerate (compared with the answer already shown); 2-4: alternatives
            raise QAError(f"between 1 and 4 new answers can be sampled, not {n}")
        turns = plain_history(history)
        try:
            model = self.generator.current()
        except GenerationError as e:
            raise QAError(str(e)) from e
        messages, kept = self.build_prompt(model, q, passages, turns)
        seed = int(time.time_ns() % 2**31) if seed is None else seed
        sampled = model.sample(messages, n, seed=seed, **self._sampling_settings())
        return _as_candidates(sampled, model.version, kept)

    def candidates_batch(
        self, asked: Sequence[tuple[str, list[Passage]]], n: int, seeds: Sequence[int]
    ) -> list[list[Candidate]]:
        """`candidates` for several (question, passages) at once, without history, one seed per question.

        The same prompts and sampling settings as `candidates`; the transformers backend samples them all in one
        batched generate, the other backends one question after another (ServedModel.sample_batch).
        """
        if not 1 <= n <= 4:
            raise QAError(f"between 1 and 4 new answers can be sampled, not {n}")
        try:
            model = self.generator.current()
        except GenerationError as e:
            raise QAError(str(e)) from e
        prompts = [self.build_prompt(model, self.check_question(q), passages, ()) for q, passages in asked]
        try:
            sampled = model.sample_batch(
                [messages for messages, _kept in prompts], n, seeds=seeds, **self._sampling_settings()
            )
        except GenerationError as e:
            raise QAError(str(e)) from e
        return [
            _as_candidates(rows, model.version, kept)
            for rows, (_messages, kept) in zip(sampled, prompts, strict=True)
        ]

    def _sampling_settings(self) -> dict[str, Any]:
        return {
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "top_k": self.config.top_k,
            "max_new_tokens": self.config.max_new_tokens,
            "timeout_s": self.config.generation_timeout_s,
            "repetition_penalty": self.config.repetition_penalty,
        }


def gate_note(result: AskResult, override: str) -> str | None:
    """Why the answer is "not in the documents" without the model, for the user (None when the model answered);
    `override` says how to let the model answer anyway where the user is (the chat's Regenerate, a CLI setting)."""
    gate = result.generation.get("relevance_gate")
    if not gate:
        return None
    return (
        f"Not asked the model: no passage is close to the question (its closest sentence "
        f"{max(0.0, gate['best_cosine']) * 100:.0f}%, below the {gate['min_relevance'] * 100:.0f}% set by "
        f"`min_relevance`). Rephrase the question with the documents' words, or {override}."
    )


def _as_candidates(sampled: Sequence[Any], version: str, shown: Sequence[Passage]) -> list[Candidate]:
    return [
        Candidate(s.text, version, s.sampling, s.latency_ms, citations_for(s.text, shown)[0]) for s in sampled
    ]
