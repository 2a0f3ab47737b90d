"""The llamacpp backend on the real default model's f16 GGUF: same prompt tokens as transformers, the app's
repetition-penalty rule, streaming, sampling, time limit, the QA pipeline, and every fallback to transformers."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from app.backends.base import GenerationStats
from app.config import AppConfig
from app.generator import Generator
from model_store.registry import ModelRegistry
from tests.conftest import llama_cpp_or_skip

pytestmark = pytest.mark.usefixtures("llamacpp_installed")

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Passage [1]: The Zorbium Tower in Kelvale opened on 14 March 1893.\n\nQuestion: When did the Zorbium Tower open?",
    "Write one sentence about the sea.",
]


@pytest.fixture
def llamacpp_installed() -> None:
    llama_cpp_or_skip()


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def llamacpp_model(gguf_registry: Path):
    generator = Generator(ModelRegistry(gguf_registry), backend="llamacpp", config=AppConfig.load())
    model = generator.current()
    assert model.backend == "llamacpp", generator.fallback_reason
    return model


def test_native_penalty_is_the_apps_rule_token_for_token(default_gguf_dir: Path) -> None:
    """llama.cpp's penalty (window = context) equals AnswerRepetitionPenalty (prompt ignored), token for token.

    If an upgrade of llama-cpp-python started feeding prompt tokens to the penalty sampler, the passages' words
    would be penalised again and this would fail.
    """
    from llama_cpp import Llama, LogitsProcessorList
    from transformers import AutoTokenizer

    from app.backends.llamacpp_lm import AnswerRepetitionPenalty, llama_options

    tok = AutoTokenizer.from_pretrained(default_gguf_dir)
    text = "The tower is tall. The tower is old. The tower is red. " * 6 + "\nDescribe the tower at length."
    ids = tok.apply_chat_template(_messages(text), add_generation_prompt=True, return_dict=False)
    llm = Llama(model_path=str(default_gguf_dir / "model.f16.gguf"), **llama_options(2, 2048))

    def run(**kwargs) -> list[int]:
        out = []
        for t in llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, **kwargs):
            if t == llm.token_eos() or len(out) >= 48:
                break
            out.append(t)
        return out

    plain = run(repeat_penalty=1.0)
    reference = run(
        repeat_penalty=1.0, logits_processor=LogitsProcessorList([AnswerRepetitionPenalty(1.5, len(ids))])
    )
    native = run(repeat_penalty=1.5)
    llm.close()
    assert native == reference
    assert native != plain  # the penalty did something on this repetitive prompt


def test_greedy_answers_agree_with_transformers(llamacpp_model, default_gguf_dir: Path) -> None:
    """Same prompt tokens, greedy, same penalty: f16 llama.cpp and fp32 transformers agree on most prompts."""
    from app.backends.transformers_lm import TransformersModel

    reference = TransformersModel.load(ModelRegistry(default_gguf_dir.parent).get("v0001"), dtype="float32")
    agree = 0
    for prompt in PROMPTS:
        a = "".join(llamacpp_model.stream(_messages(prompt), max_new_tokens=12)).strip()
        b = "".join(reference.stream(_messages(prompt), max_new_tokens=12)).strip()
        assert a, prompt
        agree += a == b
    assert agree >= 3, f"only {agree}/4 greedy answers are the same"


def test_stream_fills_stats_and_streams_pieces(llamacpp_model) -> None:
    stats = GenerationStats()
    pieces = list(llamacpp_model.stream(_messages(PROMPTS[3]), max_new_tokens=20, stats=stats))
    assert len(pieces) >= 5  # token by token, not one block at the end
    assert stats.backend == "llamacpp"
    assert stats.prompt_tokens == llamacpp_model.count_tokens(_messages(PROMPTS[3]))
    assert 1 <= stats.completion_tokens <= 20
    assert stats.finish_reason in ("stop", "length")
    assert stats.finish_reason == "length" or stats.completion_tokens < 20
    assert stats.to_json()["decode_tokens_per_s"] is None or stats.to_json()["decode_tokens_per_s"] > 0


def test_time_limit_stops_the_answer(llamacpp_model) -> None:
    stats = GenerationStats()
    list(llamacpp_model.stream(_messages(PROMPTS[3]), max_new_tokens=200, timeout_s=0.0, stats=stats))
    assert stats.finish_reason == "time"
    assert stats.completion_tokens == 1


def test_sampled_candidates_are_reproducible_by_seed(llamacpp_model) -> None:
    """Same seed, same cache state, same candidates. The first call puts the prompt in the cache: llama.cpp's
    logits for the prompt's last token differ slightly (~0.1 here) between the prompt's one-batch prefill and a
    one-row decode of that token when the rest is cached, which may change a sampled token."""
    llamacpp_model.sample(_messages(PROMPTS[3]), 1, seed=0, max_new_tokens=1)
    first = llamacpp_model.sample(_messages(PROMPTS[3]), 3, seed=7, max_new_tokens=16)
    again = llamacpp_model.sample(_messages(PROMPTS[3]), 3, seed=7, max_new_tokens=16)
    assert [s.text for s in first] == [s.text for s in again]
    assert len({s.text for s in first}) >= 2  # different seeds, different answers
    assert [s.sampling["seed"] for s in first] == [7, 8, 9]
    assert all(s.sampling["backend"] == "llamacpp" for s in first)


def test_prompt_too_long_for_the_window_is_a_clear_error(llamacpp_model) -> None:
    from app.generator import GenerationError

    huge = "word " * (llamacpp_model.context_window + 10)
    with pytest.raises(GenerationError, match="do not fit"):
        list(llamacpp_model.stream(_messages(huge), max_new_tokens=8))


def test_qa_service_answers_with_sources_on_llamacpp(gguf_registry: Path, tmp_path: Path) -> None:
    from app.qa import QAService
    from retrieval.embedder import HashEmbedder
    from retrieval.ingest import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tower.md").write_text(
        "The Zorbium Tower in Kelvale opened on 14 March 1893. It is 212 metres tall."
    )
    (docs / "ship.md").write_text(
        "The research ship Marigold Vance carries a crew of 31 and sails from Tessport."
    )
    cfg = AppConfig.load(backend="llamacpp", max_new_tokens=32)
    embedder = HashEmbedder()
    ingest(docs, cfg.paths.index_dir, embedder, progress=False)
    qa = QAService(cfg, embedder=embedder)
    events = list(qa.stream("When did the Zorbium Tower open?"))
    kinds = [k for k, _ in events]
    assert kinds[0] == "sources" and kinds[-1] == "done" and kinds.count("token") >= 3
    result = events[-1][1]
    assert result.backend == "llamacpp"
    assert result.passages[0].source.endswith("tower.md")
    assert result.generation["completion_tokens"] >= 1
    assert result.to_json()["backend"] == "llamacpp"
    candidates = qa.candidates("When did the Zorbium Tower open?", result.passages, n=2, seed=1)
    assert len(candidates) == 2 and all(c.model_version == "v0001" for c in candidates)


# ---- choosing the backend, and falling back ------------------------------------------------------------
def test_auto_serves_llamacpp_when_the_version_has_a_gguf(gguf_registry: Path) -> None:
    registry = ModelRegistry(gguf_registry)
    for backend in ("auto", "llamacpp"):
        assert Generator(registry, backend=backend).expected_backend(registry.get("v0001")) == "llamacpp"
    assert Generator(registry, backend="auto").current().backend == "llamacpp"


def test_the_simulator_samples_one_question_at_a_time_where_llamacpp_serves(gguf_registry: Path) -> None:
    from evaluation.simulate import sampling_plan

    cfg, batch_size, words = sampling_plan(AppConfig.load(), None)
    assert (cfg.backend, batch_size, words) == ("auto", 1, "one question at a time on llamacpp")
    # a batch size asked for: transformers batches the questions, as before
    cfg, batch_size, words = sampling_plan(AppConfig.load(), 4)
    assert (cfg.backend, batch_size, words) == ("transformers", 4, "4 questions per batch on transformers")


def test_the_simulator_batches_questions_where_transformers_serves(default_registry: Path) -> None:
    from evaluation.simulate import BATCHED, sampling_plan

    cfg, batch_size, words = sampling_plan(AppConfig.load(), None)
    assert (cfg.backend, batch_size) == ("transformers", BATCHED)
    assert words == f"{BATCHED} questions per batch on transformers"
    assert sampling_plan(AppConfig.load(), 1)[1:] == (1, "one question at a time on transformers")


def test_auto_serves_transformers_without_a_gguf(default_registry: Path) -> None:
    generator = Generator(ModelRegistry(default_registry), backend="auto")
    assert generator.current().backend == "transformers"
    assert not list(default_registry.joinpath("v0001").glob("*.gguf"))  # auto never converts


def test_llamacpp_without_a_gguf_serves_transformers_and_converts_nothing(default_registry: Path) -> None:
    """No conversion inside a request and no manifest rewrite: transformers serves, the reason names the fix."""
    manifest = (default_registry / "v0001" / "manifest.json").read_bytes()
    registry = ModelRegistry(default_registry)
    generator = Generator(registry, backend="llamacpp", config=AppConfig.load())
    # what doctor and eval report without loading: the same fallback (so the same prompt limit)
    assert generator.expected_backend(registry.get("v0001")) == "transformers"
    assert generator.current().backend == "transformers"
    assert "has no GGUF file" in generator.fallback_reason
    assert "ragqa models gguf v0001" in generator.fallback_reason
    assert not list(default_registry.joinpath("v0001").glob("*.gguf"))
    assert (default_registry / "v0001" / "manifest.json").read_bytes() == manifest


def test_missing_llama_cpp_falls_back_to_transformers_with_the_reason(
    gguf_registry: Path, monkeypatch
) -> None:
    import app.backends.llamacpp_lm as llamacpp_lm

    monkeypatch.setattr(
        llamacpp_lm, "llama_cpp_available", lambda: False
    )  # as on a machine without the extra
    generator = Generator(ModelRegistry(gguf_registry), backend="llamacpp")
    assert generator.expected_backend(ModelRegistry(gguf_registry).get("v0001")) == "transformers"
    assert generator.current().backend == "transformers"
    assert "llama-cpp-python is not installed" in generator.fallback_reason
    assert "CMAKE_ARGS" in generator.fallback_reason


def test_corrupt_gguf_falls_back_to_transformers(gguf_registry: Path) -> None:
    gguf = gguf_registry / "v0001" / "model.f16.gguf"
    gguf.unlink()  # a hard link: replace it, never write through it
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    generator = Generator(ModelRegistry(gguf_registry), backend="llamacpp")
    assert generator.current().backend == "transformers"
    assert "cannot load" in generator.fallback_reason


def test_hot_swap_loads_the_new_versions_gguf(gguf_registry: Path, default_gguf_dir: Path) -> None:
    registry = ModelRegistry(gguf_registry)
    generator = Generator(registry, backend="llamacpp")
    first = generator.current()

    def copy(dst: Path) -> None:
        for item in default_gguf_dir.iterdir():
            if item.name != "manifest.json":
                os.link(item, dst / item.name)

    registry.publish(copy, {"kind": "test", "gguf": {"file": "model.f16.gguf", "outtype": "f16"}})
    second = generator.current()
    assert (first.version, second.version) == ("v0001", "v0002")
    assert second.backend == "llamacpp" and second.gguf_path.parent.name == "v0002"
    assert json.loads((gguf_registry / "v0002" / "manifest.json").read_text())["parent"] == "v0001"
    shutil.rmtree(gguf_registry / "v0002")


def test_served_ui_streams_and_cites_on_llamacpp(gguf_registry: Path, tmp_path: Path) -> None:
    """The acceptance path: the Gradio app on the llamacpp backend, driven over HTTP like a browser."""
    from gradio_client import Client

    from app.services import Services
    from app.ui import launch
    from retrieval.embedder import HashEmbedder
    from tests.app.test_ui import QUESTION, _free_port, _ingest, _last_answer

    cfg = AppConfig.load(backend="llamacpp", max_new_tokens=40, port=_free_port(), host="127.0.0.1")
    embedder = HashEmbedder()
    _ingest(cfg, tmp_path, embedder)
    services = Services(cfg, embedder=embedder)
    demo, url = launch(services, prevent_thread_lock=True)
    try:
        job = Client(url, verbose=False).submit(QUESTION, api_name="/ask")
        chat, sources, model, status, _box = job.result(timeout=300)
        assert len(job.outputs()) >= 3, "tokens are streamed"
        assert "v0001" in model and "llamacpp" in model
        assert "tokens/s" in status
        assert sources.startswith("**[1] kelvale/tower.md**"), sources
        answer = _last_answer(chat)
        assert "1893" in answer, answer  # the default model copies the date from the passage
        assert "<summary>[1] kelvale/tower.md" in answer and "cited" in answer and "**cited" in sources
    finally:
        demo.close()
        services.close()


def test_both_backends_count_answer_tokens_alike(llamacpp_model, default_gguf_dir: Path) -> None:
    """completion_tokens = the answer's tokens (EOS apart) in both backends, so their decode rates compare."""
    from app.backends.transformers_lm import TransformersModel

    reference = TransformersModel.load(ModelRegistry(default_gguf_dir.parent).get("v0001"), dtype="float32")
    messages = _messages(PROMPTS[0])
    for model in (llamacpp_model, reference):
        stats = GenerationStats()
        answer = "".join(model.stream(messages, max_new_tokens=40, stats=stats))
        assert stats.eos and stats.finish_reason == "stop"
        assert stats.completion_tokens == model.count_text_tokens(answer), model.backend


def _count_decodes(model, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[int, ...]]]:
    """Record every llama_decode batch of `model`'s context: per row, the sequence ids its KV cell goes to."""
    calls: list[list[tuple[int, ...]]] = []
    ctx = model.llama._ctx
    decode = ctx.decode

    def counting(batch) -> None:  # noqa: ANN001
        raw = batch.batch
        calls.append([tuple(raw.seq_id[j][m] for m in range(raw.n_seq_id[j])) for j in range(raw.n_tokens)])
        decode(batch)

    monkeypatch.setattr(ctx, "decode", counting)
    return calls


def test_candidates_are_decoded_together_over_one_prefill(llamacpp_model, monkeypatch) -> None:
    """k candidates: one prompt prefill, then one batch per step holding every unfinished sequence.

    Sampled one after another there would be k decodes per step (each with sequence 0 only), so this fails.
    """
    calls = _count_decodes(llamacpp_model, monkeypatch)
    out = llamacpp_model.sample(_messages(PROMPTS[3]), 4, seed=3, max_new_tokens=16)
    assert len(out) == 4
    prefill = [c for c in calls if set(c) == {(0,)} and len(c) > 1]
    assert len(prefill) == 1  # the prompt once (it fits one 512-token batch)
    steps = [c for c in calls if c not in prefill]
    # the first step decodes the next token of all four candidates at once (rows shared by equal answers)
    assert steps and sorted(s for row in steps[0] for s in row) == [0, 1, 2, 3]
    assert len(calls) <= 1 + 15  # prefill + at most max_new_tokens - 1 steps, not 4x that
    assert max(s.num_tokens for s in out) <= 16


def test_candidates_with_the_same_answer_so_far_share_one_row(llamacpp_model, monkeypatch) -> None:
    """top_k=1: every candidate draws the greedy token, so the four answers stay equal and each step decodes ONE
    row whose KV cell belongs to all four sequences (one row per candidate, as before, fails here). The four
    answers are one text, and the cache is left as the plain prompt. (Not compared with the streamed greedy answer:
    a one-row decode and the stream's prefill may differ at a near-tie, see the module doc.)"""
    messages = _messages(PROMPTS[2])
    "".join(llamacpp_model.stream(messages, max_new_tokens=1))  # the prompt in the cache, as after an answer
    calls = _count_decodes(llamacpp_model, monkeypatch)
    rows = llamacpp_model.sample(messages, 4, seed=2, top_k=1, temperature=5.0, top_p=1.0, max_new_tokens=12)
    assert len({r.text for r in rows}) == 1 and rows[0].text.strip()
    steps = calls[1:]  # after the prompt's last token is decoded again
    assert len(steps) >= 3
    assert all(step == [(0, 1, 2, 3)] for step in steps), steps
    assert _cache_is_consistent(llamacpp_model)


def test_shared_histories_split_where_the_draws_differ() -> None:
    from app.backends.llamacpp_lm import shared_histories

    # 0 and 1 drew the same token, 2 another; 3 finished (its EOS is not in pending)
    assert shared_histories([[0, 1, 2, 3]], {0: 7, 1: 7, 2: 9}) == [[0, 1], [2]]
    # groups never merge again, even on the same token: their earlier answers differ
    assert shared_histories([[0, 1], [2]], {0: 5, 1: 6, 2: 5}) == [[0], [1], [2]]
    assert shared_histories([[0], [1]], {}) == []


def test_alternatives_after_the_answer_reuse_its_prompt_and_leave_greedy_unchanged(
    llamacpp_model, monkeypatch
) -> None:
    """The UI asks for alternatives right after the streamed answer: the prompt's KV cells are reused (no
    prefill) and the cache is left as the plain prompt, so the next greedy answer is the same as before."""
    messages = _messages(PROMPTS[2])
    before = "".join(llamacpp_model.stream(messages, max_new_tokens=12))
    calls = _count_decodes(llamacpp_model, monkeypatch)
    llamacpp_model.sample(messages, 3, seed=1, max_new_tokens=8)
    assert calls[0] == [(0,)]  # only the prompt's last token is decoded again (for its logits)
    after = "".join(llamacpp_model.stream(messages, max_new_tokens=12))
    assert after == before
    other = "".join(llamacpp_model.stream(_messages(PROMPTS[0]), max_new_tokens=12))
    assert other.strip()


def test_sampled_records_have_the_same_shape_as_before(llamacpp_model) -> None:
    from app.backends.base import Sampling

    out = llamacpp_model.sample(_messages(PROMPTS[1]), 2, seed=5, max_new_tokens=8, temperature=0.7)
    expected = Sampling(8, 120.0, 1.1, 2, 0.7, 0.95, 5)
    for i, s in enumerate(out):
        assert s.sampling == expected.record(i, seed=5 + i, backend="llamacpp")
        assert s.latency_ms > 0 and s.num_tokens >= 1 and isinstance(s.finished, bool)


def test_top_k_reaches_the_sampler_chain(llamacpp_model) -> None:
    """top_k=1 at a hot temperature: every parallel candidate is the greedy answer (same penalty rule); with
    top_k off the same temperature samples other answers."""
    messages = _messages(PROMPTS[3])
    hot = {"temperature": 5.0, "top_p": 1.0, "max_new_tokens": 10}
    greedy = "".join(llamacpp_model.stream(messages, max_new_tokens=10)).strip()
    rows = llamacpp_model.sample(messages, 4, seed=4, top_k=1, **hot)
    assert [r.text for r in rows] == [greedy] * 4
    assert all(r.sampling["top_k"] == 1 for r in rows)
    free = llamacpp_model.sample(messages, 4, seed=4, top_k=0, **hot)
    assert any(r.text != greedy for r in free)


def test_threads_drop_while_a_job_runs_and_come_back(llamacpp_model) -> None:
    import llama_cpp

    wanted = [1]
    llamacpp_model.threads = 2
    llamacpp_model.threads_now = lambda: wanted[0]
    list(llamacpp_model.stream(_messages(PROMPTS[0]), max_new_tokens=2))
    assert llama_cpp.llama_n_threads(llamacpp_model.llama.ctx) == 1
    assert llama_cpp.llama_n_threads_batch(llamacpp_model.llama.ctx) == 1
    wanted[0] = 2
    llamacpp_model.sample(_messages(PROMPTS[0]), 2, max_new_tokens=2)
    assert llama_cpp.llama_n_threads(llamacpp_model.llama.ctx) == 2


def test_auto_switches_to_llamacpp_when_it_lands_while_serving(gguf_registry: Path, monkeypatch) -> None:
    """`make run` serves the first page with transformers while llama.cpp builds in the background: once the
    package is importable, the next request after the recheck interval is answered by llama.cpp."""
    import app.backends.llamacpp_lm as llamacpp_lm
    import app.generator as generator_module

    installed = {"llama_cpp": False}
    monkeypatch.setattr(llamacpp_lm, "llama_cpp_available", lambda: installed["llama_cpp"])
    monkeypatch.setattr(generator_module, "LLAMACPP_RECHECK_S", 0.0)
    generator = Generator(ModelRegistry(gguf_registry), backend="auto")
    first = generator.current()
    assert first.backend == "transformers"
    assert generator.current() is first  # nothing changed: the loaded model is reused
    installed["llama_cpp"] = True  # the background build finished
    second = generator.current()
    assert second.backend == "llamacpp" and second.version == first.version
    assert generator.current() is second  # and it stays


def test_auto_does_not_wait_for_llamacpp_when_it_serves_already(gguf_registry: Path, monkeypatch) -> None:
    import app.generator as generator_module

    monkeypatch.setattr(generator_module, "LLAMACPP_RECHECK_S", 0.0)
    generator = Generator(ModelRegistry(gguf_registry), backend="auto")
    served = generator.current()
    assert served.backend == "llamacpp" and not generator._awaiting_llamacpp
    assert generator.current() is served


def test_trained_context_is_read_from_the_gguf(default_gguf_dir: Path) -> None:
    """The window is capped by the GGUF's own context_length (SmolLM2: 8192), read without loading the weights."""
    from app.backends.llamacpp_lm import _trained_context

    assert _trained_context(default_gguf_dir / "model.f16.gguf") == 8192


# ---- prompt-lookup greedy -------------------------------------------------------------------------------
COPYING = [
    PROMPTS[2],  # the answer copies the passage's date
    "Passage [1]: Run `ragqa ingest PATH` to add a folder of documents; the app indexes every file it can read "
    "and skips the others with a warning.\n\nQuestion: How do I add a folder of documents? Quote the passage.",
    "The tower is tall. The tower is old. The tower is red. " * 6 + "\nDescribe the tower at length.",
]


def _greedy_ids(model, text: str, max_new_tokens: int, lookup: bool) -> tuple[list[int], GenerationStats]:
    model.prompt_lookup = lookup
    model.llama.reset()
    stats = GenerationStats()
    prompt = model.codec.prompt_ids(_messages(text))
    from app.backends.base import Decoding

    with model._lock:
        ids = list(model._tokens(prompt, Decoding(max_new_tokens=max_new_tokens), stats))
    return ids, stats


def test_prompt_lookup_gives_the_plain_greedy_tokens_in_fewer_steps(llamacpp_model, monkeypatch) -> None:
    """Drafts from the prompt change how many decode calls an answer takes, never its tokens: the same ids as
    llama-cpp-python's own greedy `generate` (the app's penalty included), with guesses confirmed on copying
    prompts. Accepting a guess greedy decoding did not confirm, or losing the penalty, fails here."""
    steps = {}
    for text in [*COPYING, *PROMPTS[:2], PROMPTS[3]]:
        plain, plain_stats = _greedy_ids(llamacpp_model, text, 48, lookup=False)
        calls = _count_decodes(llamacpp_model, monkeypatch)
        fast, fast_stats = _greedy_ids(llamacpp_model, text, 48, lookup=True)
        monkeypatch.undo()
        assert fast == plain, text
        assert (fast_stats.finish_reason, fast_stats.completion_tokens) == (
            plain_stats.finish_reason,
            plain_stats.completion_tokens,
        )
        steps[text] = (len(calls) - 1, len(fast))  # decode calls after the prefill, tokens
    # The raw model copies the date sentence (21 tokens) from its passage: 8 steps here.
    used, made = steps[COPYING[0]]
    assert made >= 10 and used <= 0.6 * made, steps[COPYING[0]]


def _cache_is_consistent(model) -> bool:
    """The Llama's count of decoded tokens is what the KV cache holds (sequence 0 only)."""
    import llama_cpp

    llama = model.llama
    memory = llama_cpp.llama_get_memory(llama.ctx)
    return llama_cpp.llama_memory_seq_pos_max(memory, 0) == llama.n_tokens - 1 and all(
        llama_cpp.llama_memory_seq_pos_max(memory, seq) == -1 for seq in range(1, 4)
    )


def test_prompt_lookup_keeps_the_token_budget_and_the_cache(llamacpp_model) -> None:
    """Budgets that cut the guesses short stop exactly there; a stream closed early (Stop) leaves the cache as
    prompt + decoded tokens, so the next answer to the same prompt is the full one again."""
    full, _ = _greedy_ids(llamacpp_model, COPYING[2], 40, lookup=True)
    assert len(full) == 40
    for budget in (1, 2, 5, 11):
        ids, stats = _greedy_ids(llamacpp_model, COPYING[2], budget, lookup=True)
        assert ids == full[:budget] and stats.finish_reason == "length"
    llamacpp_model.prompt_lookup = True
    stream = llamacpp_model.stream(_messages(COPYING[2]), max_new_tokens=40)
    next(stream), next(stream)
    stream.close()
    llama = llamacpp_model.llama
    assert llama.n_tokens == len(llamacpp_model.codec.prompt_ids(_messages(COPYING[2]))) + 1
    assert _cache_is_consistent(llamacpp_model)
    again = llamacpp_model.codec.tokenizer(
        "".join(llamacpp_model.stream(_messages(COPYING[2]), max_new_tokens=40)), add_special_tokens=False
    )["input_ids"]
    assert again[:30] == full[:30]


def test_prompt_lookup_stops_in_time_inside_a_guess_and_survives_a_failed_decode(
    llamacpp_model, monkeypatch
) -> None:
    """The time limit, checked after every token, also stops inside a run of confirmed guesses: exactly the
    tokens up to it, reason "time". A decode that fails mid-answer is a GenerationError and leaves a consistent
    cache: the next answer is the full one."""
    from types import SimpleNamespace

    import app.backends.llamacpp_lm as backend
    from app.generator import GenerationError

    text = COPYING[0]
    full, _ = _greedy_ids(llamacpp_model, text, 40, lookup=True)
    prompt_len = len(llamacpp_model.codec.prompt_ids(_messages(text)))
    for k in range(1, 12):
        calls = [0]

        def clock(k: int = k, calls: list[int] = calls) -> float:
            calls[0] += 1  # the first call sets the deadline; then one check per token
            return 0.0 if calls[0] <= k else 1e9

        monkeypatch.setattr(backend, "time", SimpleNamespace(perf_counter=clock))
        ids, stats = _greedy_ids(llamacpp_model, text, 40, lookup=True)
        monkeypatch.undo()
        assert ids == full[:k] and stats.finish_reason == "time", k
        assert llamacpp_model.llama.n_tokens in (prompt_len + k - 1, prompt_len + k)
        assert _cache_is_consistent(llamacpp_model)
    real = backend.decode_rows
    seen = [0]

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003
        seen[0] += 1
        if seen[0] == 3:
            raise RuntimeError("llama_decode returned -1")
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "decode_rows", failing)
    with pytest.raises(GenerationError, match="generation failed"):
        list(llamacpp_model.stream(_messages(text), max_new_tokens=40))
    monkeypatch.undo()
    assert _cache_is_consistent(llamacpp_model)
    again = llamacpp_model.codec.tokenizer(
        "".join(llamacpp_model.stream(_messages(text), max_new_tokens=40)), add_special_tokens=False
    )["input_ids"]
    assert again[:15] == full[:15]


def test_each_candidate_draws_from_the_row_that_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """ParallelSampler on a scripted fake engine: candidates split into groups step by step, and every draw must
    read the logits of the row whose KV cell belongs to that candidate (a wrong row index fails here, although it
    would still produce plausible text on a real model)."""
    from types import SimpleNamespace

    import llama_cpp
    import llama_cpp._internals as internals

    from app.backends import llamacpp_lm
    from app.backends.base import Sampling

    eos = 2
    script = {0: [5, 6, 9, eos], 1: [5, 6, 10, eos], 2: [5, 7, 11, eos], 3: [5, 8, eos]}

    class FakeBatch:
        def __init__(self, n_tokens: int, embd: int, n_seq_max: int, verbose: bool) -> None:
            self.batch = SimpleNamespace(
                n_tokens=0,
                token=[0] * n_tokens,
                pos=[0] * n_tokens,
                n_seq_id=[0] * n_tokens,
                seq_id=[[0] * n_seq_max for _ in range(n_tokens)],
                logits=[False] * n_tokens,
            )

        def close(self) -> None:
            pass

    class FakeContext:
        def __init__(self) -> None:
            self.rows: list[tuple[int, ...]] = [(0, 1, 2, 3)]  # the prompt's last row, shared after seq_cp
            self.steps: list[list[tuple[tuple[int, ...], int, int]]] = []

        def decode(self, batch: FakeBatch) -> None:
            b = batch.batch
            self.rows = [tuple(b.seq_id[j][: b.n_seq_id[j]]) for j in range(b.n_tokens)]
            self.steps.append([(self.rows[j], b.token[j], b.pos[j]) for j in range(b.n_tokens)])

    class FakeSampler:
        def __init__(self, seq: int) -> None:
            self.seq, self.drawn = seq, 0

        def sample(self, ctx: FakeContext, idx: int) -> int:
            row = ctx.rows[idx]
            assert self.seq in row, f"candidate {self.seq} drew from row {idx} = sequences {row}"
            token = script[self.seq][self.drawn]
            self.drawn += 1
            return token

        def close(self) -> None:
            pass

    context = FakeContext()
    llama = SimpleNamespace(ctx=None, _ctx=context, n_tokens=0, _requires_eval=False)
    for name in ("llama_memory_seq_keep", "llama_memory_seq_cp", "llama_memory_seq_rm"):
        monkeypatch.setattr(llama_cpp, name, lambda *args: None)
    monkeypatch.setattr(llama_cpp, "llama_get_memory", lambda ctx: None)
    monkeypatch.setattr(llama_cpp, "llama_n_seq_max", lambda ctx: 4)
    monkeypatch.setattr(internals, "LlamaBatch", FakeBatch)
    monkeypatch.setattr(llamacpp_lm, "prefill", lambda llama, prompt: None)
    sampler = llamacpp_lm.ParallelSampler(llama, {eos})
    monkeypatch.setattr(sampler, "_sampler", lambda request, seed: FakeSampler(seed - request.seed))
    prompt = [1] * 10
    out = sampler.run(prompt, Sampling(max_new_tokens=8, n=4, seed=100), 0, 4)
    assert out == [([5, 6, 9], "stop"), ([5, 6, 10], "stop"), ([5, 7, 11], "stop"), ([5, 8], "stop")]
    assert context.steps == [
        [((0, 1, 2, 3), 5, 10)],
        [((0, 1), 6, 11), ((2,), 7, 11), ((3,), 8, 11)],
        [((0,), 9, 12), ((1,), 10, 12), ((2,), 11, 12)],
    ]
