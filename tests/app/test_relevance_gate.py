"""The relevance gate: a question no indexed passage is close to gets "not in the documents" without the model.

Fast tests use the tiny random Llama and the hash embedder, with the threshold set explicitly (the auto threshold
is calibrated for the real embedder only); the real-defaults test asks the real model with the real embedder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.config import AppConfig
from app.qa import DEFAULT_MIN_RELEVANCE, QAService, Retrieved, gate_note
from app.services import Services
from app.ui import Handlers, new_state
from model_store.registry import ModelRegistry
from retrieval.embedder import DEFAULT_MODEL_NAME, HashEmbedder
from retrieval.ingest import ingest
from retrieval.prompt import NO_ANSWER
from tests.app.test_ui import DOCS, QUESTION

OFF_TOPIC = "What is the capital of France?"


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _qa(ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path, **config: Any) -> QAService:
    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    cfg = AppConfig.load(max_new_tokens=6, dtype="float32", **config)
    embedder = HashEmbedder()
    ingest(_corpus(tmp_path), cfg.paths.index_dir, embedder, progress=False)
    return QAService(cfg, embedder=embedder)


def _forbid_generation(qa: QAService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any generation fail the test: the gate must answer without the model."""
    model = qa.generator.current()

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the model was asked")

    for name in ("stream", "generate_batch", "generate"):
        if hasattr(model, name):
            monkeypatch.setattr(model, name, refuse)


def test_the_auto_threshold_is_the_default_embedders_only(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    qa = _qa(ragqa_home, tiny_llama_dir, tmp_path)
    some = qa.retrieve(QUESTION)
    assert qa.min_relevance() == 0.0  # the hash embedder's cosines are on another scale: off
    qa._embedder.name = DEFAULT_MODEL_NAME  # what the real all-MiniLM-L6-v2 reports
    assert qa.min_relevance() == DEFAULT_MIN_RELEVANCE
    explicit = QAService(AppConfig.load(min_relevance=0.5), embedder=HashEmbedder())
    assert explicit.min_relevance() == 0.5
    # nothing found (an empty index) is not gated: there is nothing to be relevant
    assert not explicit.gated(Retrieved([], float("-inf")))
    # nor passages without a measured distance (the dense search found nothing, BM25 did)
    assert explicit.gated(Retrieved(some, 0.1)) and not explicit.gated(Retrieved(some, float("-inf")))


def test_config_takes_auto_off_or_a_cosine() -> None:
    from app.config import ConfigError

    assert AppConfig.load(min_relevance="auto").min_relevance is None
    assert AppConfig.load(min_relevance=False).min_relevance == 0.0  # YAML 1.1's unquoted `off`
    assert AppConfig.load(min_relevance="off").min_relevance == 0.0
    assert AppConfig.load(min_relevance=0.35).min_relevance == 0.35
    with pytest.raises(ConfigError, match="min_relevance"):
        AppConfig.load(min_relevance="high")
    with pytest.raises(ConfigError, match="min_relevance"):
        AppConfig.load(min_relevance=1.5)


def test_a_follow_up_is_gated_only_when_no_reading_is_close(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's score is the best of the question alone and joined with the previous question, whichever
    reading the search used: a follow-up whose joined reading is about the documents is not gated."""
    import app.qa as qa_module
    from app.relevance import sentence_relevance
    from retrieval.followup import QueryChoice, joined_query, looks_like_follow_up

    follow_up = "What about its opening date?"
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "In 1893."}]
    probe = _qa(ragqa_home, tiny_llama_dir, tmp_path, min_relevance=0.01)
    alone = probe.retrieve_scored(follow_up).best_cosine
    vector = probe.embedder().encode_query(follow_up)
    # the search took the follow-up alone (the joined reading lost choose_query's margin test)
    monkeypatch.setattr(
        qa_module, "choose_query", lambda *_a, **_k: QueryChoice(follow_up, vector, False, 0.1, 0.2)
    )
    joined = probe.retrieve_scored(follow_up, history).best_cosine
    assert joined > alone + 0.05, (joined, alone)
    qa = QAService(probe.config.with_(min_relevance=(alone + joined) / 2), embedder=probe._embedder)
    assert not qa.gated(qa.retrieve_scored(follow_up, history))
    assert qa.gated(qa.retrieve_scored(follow_up))  # no conversation: the question alone is not close
    # A self-contained question (no referring word, no "and ...", more than 4 words) is judged alone: its joined
    # reading matches the previous question's documents whatever it asks.
    standalone = "When was the opening date of quillbread?"
    assert not looks_like_follow_up(standalone) and looks_like_follow_up(follow_up)
    monkeypatch.setattr(
        qa_module,
        "choose_query",
        lambda *_a, **_k: QueryChoice(
            joined_query(standalone, QUESTION),
            probe.embedder().encode_query(joined_query(standalone, QUESTION)),
            True,
            0.1,
            0.2,
        ),
    )
    alone_s = probe.retrieve_scored(standalone).best_cosine
    joined_s = sentence_relevance(
        probe.embedder(), [joined_query(standalone, QUESTION)], probe.retrieve(standalone, history)
    )
    assert joined_s > alone_s + 0.05, (joined_s, alone_s)
    strict = QAService(probe.config.with_(min_relevance=(alone_s + joined_s) / 2), embedder=probe._embedder)
    assert strict.gated(strict.retrieve_scored(standalone, history))


def test_the_score_is_the_best_sentence_not_the_best_chunk() -> None:
    """sentence_relevance: the best cosine of any reading with any sentence of the passages (short fragments
    left out); -inf with nothing to compare."""
    from app.relevance import sentence_relevance
    from retrieval.types import Passage

    emb = HashEmbedder()
    text = "Quillbread is baked from oat flour. The Zorbium Tower opened in 1893. Usage only."
    passages = [Passage(1, "a#1", "a.md", text, 0.1)]
    best = sentence_relevance(emb, ["When did the Zorbium Tower open?"], passages)
    sentence = np.asarray(emb.encode(["The Zorbium Tower opened in 1893."]), dtype=np.float32)[0]
    query = np.asarray(emb.encode_query("When did the Zorbium Tower open?"), dtype=np.float32).reshape(-1)
    expected = float(sentence @ query / (np.linalg.norm(sentence) * np.linalg.norm(query)))
    assert best == pytest.approx(expected, abs=1e-5)
    whole = np.asarray(emb.encode([text]), dtype=np.float32)[0]
    assert best > float(
        whole @ query / (np.linalg.norm(whole) * np.linalg.norm(query))
    )  # the chunk scores less
    assert sentence_relevance(emb, ["x"], [Passage(1, "b#1", "b.md", "Too short.", 0.1)]) == float("-inf")
    assert sentence_relevance(emb, [" "], passages) == float("-inf")
    # the sources pane's per-passage relevance is each passage's best sentence: the gate's score is their best
    from app.relevance import passage_relevance

    other = Passage(2, "d#1", "d.md", "The ship Marigold Vance sails from Tessport. Its crew is 31.", 0.1)
    labels = passage_relevance(emb, "When did the Zorbium Tower open?", [*passages, other])
    assert set(labels) == {1, 2} and labels[1] == pytest.approx(best, abs=1e-5) and labels[2] < labels[1]
    assert max(labels.values()) == pytest.approx(
        sentence_relevance(emb, ["When did the Zorbium Tower open?"], [*passages, other]), abs=1e-6
    )
    # a passage's sentences are embedded once: the next question over it embeds only itself
    calls: list[int] = []
    real = emb.encode
    emb.encode = lambda texts, **kw: calls.append(len(texts)) or real(texts, **kw)  # type: ignore[method-assign]
    fresh = Passage(2, "c#1", "c.md", "Marigold Vance carries a crew of 31. It was launched in 2011.", 0.1)
    first = sentence_relevance(emb, ["Who sails the Marigold Vance?"], [fresh])
    again = sentence_relevance(emb, ["Who sails the Marigold Vance?"], [fresh])
    assert first == again and calls == [2]


def test_a_gated_question_is_answered_without_the_model(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    qa = _qa(ragqa_home, tiny_llama_dir, tmp_path, min_relevance=0.999)
    _forbid_generation(qa, monkeypatch)
    events = list(qa.stream(OFF_TOPIC))
    assert [kind for kind, _ in events] == ["sources", "token", "done"]
    result = events[-1][1]
    assert result.answer == NO_ANSWER and events[1][1] == NO_ANSWER
    assert result.passages, "the passages found are still shown"
    assert result.cited == [] and result.model_version == "v0001"
    gate = result.generation["relevance_gate"]
    assert gate["min_relevance"] == 0.999 and gate["best_cosine"] < 0.999
    assert set(result.timings_ms) == {"retrieve", "first_token", "total"}
    assert "Not asked the model" in (gate_note(result, "do X") or "") and "or do X." in gate_note(
        result, "do X"
    )
    (batch,) = list(qa.ask_many([OFF_TOPIC, QUESTION], batch_size=2))  # both gated: no generate batch at all
    assert sorted(i for i, _ in batch) == [0, 1]
    assert all(r.answer == NO_ANSWER and "relevance_gate" in r.generation for _, r in batch)


def test_a_gated_answer_shows_the_passages_the_prompt_would_carry(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is shown and stored must be what a Regenerate prompt carries: the prompt-fitted passages, not the raw
    retrieval (which the prompt limit trims on a CPU)."""
    qa = _qa(ragqa_home, tiny_llama_dir, tmp_path, min_relevance=0.999)
    real = qa.build_prompt

    def keep_first(model: Any, question: str, passages: list[Any], history: Any) -> Any:
        messages, _kept = real(model, question, passages[:1], history)
        return messages, passages[:1]

    monkeypatch.setattr(qa, "build_prompt", keep_first)
    assert len(qa.retrieve(OFF_TOPIC)) > 1
    events = dict(qa.stream(OFF_TOPIC))
    assert len(events["sources"]) == 1 and events["done"].passages == events["sources"]
    ((_, batched),) = next(iter(qa.ask_many([OFF_TOPIC], batch_size=2)))
    assert [p.chunk_id for p in batched.passages] == [p.chunk_id for p in events["sources"]]


def test_a_relevant_question_reaches_the_model(
    ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    probe = _qa(ragqa_home, tiny_llama_dir, tmp_path, min_relevance=0.01)
    on, off = probe.retrieve_scored(QUESTION).best_cosine, probe.retrieve_scored(OFF_TOPIC).best_cosine
    assert on > off, "the tower question must match the corpus better than an off-topic one"
    qa = QAService(probe.config.with_(min_relevance=(on + off) / 2), embedder=probe._embedder)
    answered = qa.ask(QUESTION)
    assert "relevance_gate" not in answered.generation and gate_note(answered, "x") is None
    assert answered.generation.get("completion_tokens", 0) > 0  # the model wrote it
    assert "relevance_gate" in qa.ask(OFF_TOPIC).generation
    # ask_many: the gated question comes first, the other from the model, each as `ask` gives it
    results = dict(item for batch in qa.ask_many([QUESTION, OFF_TOPIC], batch_size=2) for item in batch)
    assert "relevance_gate" in results[1].generation and results[1].answer == NO_ANSWER
    assert results[0].answer == answered.answer and "relevance_gate" not in results[0].generation


@pytest.fixture
def gated_services(ragqa_home: Path, tiny_llama_dir: Path, tmp_path: Path) -> Iterator[Services]:
    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    cfg = AppConfig.load(max_new_tokens=6, min_relevance=0.999)
    embedder = HashEmbedder()
    ingest(_corpus(tmp_path), cfg.paths.index_dir, embedder, progress=False)
    services = Services(cfg, embedder=embedder)
    yield services
    services.close()


def test_the_chat_says_why_and_records_the_gate(gated_services: Services) -> None:
    h = Handlers(gated_services)
    state = new_state()
    *_, (chat, sources, _model, status, *_rest) = h.ask(OFF_TOPIC, state)
    assert "Not asked the model" in status and "min_relevance" in status and "Regenerate" in status
    assert NO_ANSWER in str(chat[-1]["content"])
    assert "[1]" in sources  # what was found is shown, with its relevance
    (rec,) = list(gated_services.store.iter_interactions())
    (answer,) = rec.candidates
    assert answer.text == NO_ANSWER and answer.sampling["relevance_gate"]["min_relevance"] == 0.999
    # the user can still let the model try: alternatives are sampled over the same passages
    texts, note = h.alternatives(2, state)
    assert note.startswith("2 alternatives"), note
    assert len(texts) == 2
    original, new, note = h.regenerate(state)  # what the status line offers
    assert NO_ANSWER in original and new and not note.startswith("⚠️"), note
    (rec,) = list(gated_services.store.iter_interactions())
    assert [c.label for c in rec.candidates][-1] == "regenerated"


@pytest.mark.slow
def test_real_defaults_gate_off_topic_questions_only(default_registry: Path, tmp_path: Path) -> None:
    from app.cli import main
    from tests.app.test_ask_e2e import DOCS as E2E_DOCS
    from tests.app.test_ask_e2e import QUESTIONS

    root = tmp_path / "e2e"
    for rel, text in E2E_DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert main(["ingest", str(root)]) == 0
    qa = QAService(AppConfig.load(max_new_tokens=24))
    assert qa.min_relevance() == DEFAULT_MIN_RELEVANCE
    for question in (OFF_TOPIC, "Who wrote Pride and Prejudice?"):
        result = qa.ask(question)
        assert result.answer == NO_ANSWER and "relevance_gate" in result.generation, (
            question,
            result.generation,
        )
    for question, _source, _fact in QUESTIONS:
        assert "relevance_gate" not in qa.ask(question).generation, question
    # a follow-up is judged by the query actually searched (joined with the previous question)
    history = [
        {"role": "user", "content": "Who designed the Zorbium Tower?"},
        {"role": "assistant", "content": "Alma Pettersen."},
    ]
    assert qa.retrieve_scored("what year?").best_cosine < DEFAULT_MIN_RELEVANCE  # alone it would be gated
    assert "relevance_gate" not in qa.ask("what year?", history).generation
    off = QAService(AppConfig.load(max_new_tokens=24, min_relevance=0))
    assert "relevance_gate" not in off.ask(OFF_TOPIC).generation  # 0 turns the gate off


@pytest.mark.parametrize("min_relevance", ["off", 0.999])
def test_the_sources_relevance_is_measured_against_the_text_searched(
    ragqa_home: Path,
    tiny_llama_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    min_relevance: Any,
) -> None:
    """A follow-up searched together with the previous question: the sources pane's relevance (shown and stored)
    is the joined reading's, as the gate's is, for a generated and for a gated answer alike."""
    import app.qa as qa_module
    import app.relevance as relevance_module
    from retrieval.followup import QueryChoice, joined_query

    ModelRegistry(ragqa_home / "models").publish_folder(tiny_llama_dir, {"kind": "base"})
    cfg = AppConfig.load(max_new_tokens=6, min_relevance=min_relevance)
    embedder = HashEmbedder()
    ingest(_corpus(tmp_path), cfg.paths.index_dir, embedder, progress=False)
    services = Services(cfg, embedder=embedder)
    try:
        h = Handlers(services)
        state = new_state()
        list(h.ask(QUESTION, state))
        follow_up = "and how tall is it?"
        joined = joined_query(follow_up, QUESTION)
        vector = embedder.encode_query(joined)
        monkeypatch.setattr(
            qa_module, "choose_query", lambda *_a, **_k: QueryChoice(joined, vector, True, 0.1, 0.2)
        )
        measured: list[str] = []
        real = relevance_module.passage_relevance

        def spy(emb: Any, question: str, passages: Any) -> dict[int, float]:
            measured.append(question)
            return real(emb, question, passages)

        monkeypatch.setattr(relevance_module, "passage_relevance", spy)
        list(h.ask(follow_up, state))
        assert measured == [joined]
        result = services.qa.ask(follow_up, [{"role": "user", "content": QUESTION}])
        assert result.search_query == joined
        assert ("relevance_gate" in result.generation) == (min_relevance != "off")
    finally:
        services.close()


def test_the_guides_own_questions_are_never_gated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the bundled guide with the default embedder: none of the user-style questions about it is gated (the
    first, chunk-level gate refused 3-4 of benchmarks/ask_latency.py's 20), the off-topic ones are."""
    from benchmarks.ask_latency import QUESTIONS as ASK_LATENCY
    from evaluation.guide_questions import GUIDE_QUESTIONS
    from evaluation.guide_questions import OFF_TOPIC as GUIDE_OFF_TOPIC
    from retrieval.embedder import SentenceTransformerEmbedder

    monkeypatch.setenv("RAGQA_HOME", str(tmp_path / "home"))
    cfg = AppConfig.load()
    embedder = SentenceTransformerEmbedder(None)
    ingest(
        Path(__file__).resolve().parents[2] / "app" / "demo_corpus",
        cfg.paths.index_dir,
        embedder,
        progress=False,
    )
    qa = QAService(cfg, embedder=embedder)
    assert qa.min_relevance() == DEFAULT_MIN_RELEVANCE
    on_topic = [q for q, _ in GUIDE_QUESTIONS] + list(ASK_LATENCY)
    gated = [q for q in on_topic if qa.gated(qa.retrieve_scored(q))]
    assert gated == [], gated
    assert all(qa.gated(qa.retrieve_scored(q)) for q in GUIDE_OFF_TOPIC)
    # asked right after a question about the guide, in the same chat, off-topic questions are still gated
    # ("Mars" after a model-version question: judged over the joined search's passages it scored 0.23)
    for previous in (
        "How do I install the app?",
        "How do I export my feedback?",
        "How do I roll back a bad version?",
    ):
        history = [{"role": "user", "content": previous}, {"role": "assistant", "content": "..."}]
        leaked = [q for q in GUIDE_OFF_TOPIC if not qa.gated(qa.retrieve_scored(q, history))]
        assert leaked == [], (previous, leaked)
