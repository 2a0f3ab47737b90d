"""`ragqa eval` batched (`batch_size` > 1) and resumed: the same scored results as one ask per question.

The generator is a tiny random Llama in fp32 whose greedy answers depend on the prompt (initializer_range 0.2),
so equal answers mean the batched path fed each question the prompt the ask path builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.journal import JournalError
from evaluation.runner import JOURNAL, EvalOptions, ExampleResult, run_eval
from retrieval.embedder import HashEmbedder
from tests.evaluation.conftest import build_tiny_lm


@pytest.fixture(scope="module")
def lively_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("lively"), seed=0, initializer_range=0.2)


@pytest.fixture
def registry(ragqa_home: Path, lively_lm: Path) -> Path:
    from model_store.registry import ModelRegistry

    ModelRegistry(ragqa_home / "models").publish_folder(lively_lm, {"kind": "base"})
    config = {"max_new_tokens": 8, "k": 3, "dtype": "float32"}
    (ragqa_home / "config.yaml").write_text(json.dumps(config))
    return ragqa_home / "models"


def _options(fixtures_dir: Path, out: Path, batch_size: int, **extra: Any) -> EvalOptions:
    return EvalOptions(
        fixtures_dir / "squad_v2.json", out_dir=out, progress=False, batch_size=batch_size, **extra
    )


def _scored(result: ExampleResult) -> dict[str, Any]:
    """Everything a result records except its timings."""
    return {k: v for k, v in result.to_record().items() if k != "timings_ms"}


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report["metrics"].items() if k != "latency_ms"}


class Interrupted(Exception):
    pass


def _interrupt_after(n: int) -> Any:
    seen: list[int] = []

    def hook(position: int, _result: ExampleResult) -> None:
        seen.append(position)
        if len(seen) == n:
            raise Interrupted

    return hook


def test_batched_eval_scores_as_one_ask_per_question(
    registry: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    alone = run_eval(_options(fixtures_dir, tmp_path / "one", 1), embedder=HashEmbedder())
    batched = run_eval(_options(fixtures_dir, tmp_path / "four", 4), embedder=HashEmbedder())
    assert sum(bool(r.answer) for r in alone.results) >= 4  # real text to compare, not empty answers
    assert len({r.answer for r in alone.results}) >= 4
    assert [_scored(r) for r in batched.results] == [_scored(r) for r in alone.results]
    assert _metrics(batched.report) == _metrics(alone.report)
    assert batched.report["settings"]["batch_size"] == 4
    # the limit of the backend that answered (no GGUF: transformers, on the CPU unless CUDA is there)
    from app.prompt_limit import auto_prompt_tokens
    from model_store.hardware import cuda_state

    for run in (alone, batched):
        assert run.report["settings"]["serving_backend"] == "transformers"
        assert run.report["settings"]["prompt_token_limit"] == auto_prompt_tokens(not cuda_state()[0])
    # Batched answers end together: no per-answer latency, the batch's generate time instead.
    assert batched.report["metrics"]["latency_ms"]["total_p50"] is None
    assert alone.report["metrics"]["latency_ms"]["total_p50"] > 0
    assert all(set(r.timings_ms) == {"retrieve", "generate_batch"} for r in batched.results)


def test_an_interrupted_eval_resumes_to_the_same_report(
    registry: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=_interrupt_after(3))
    lines = (out / JOURNAL).read_text().splitlines()
    assert len(lines) == 1 + 3  # the options, then the 3 answers that completed before the interruption
    assert not (out / "report.json").exists()

    answered: list[int] = []
    resumed = run_eval(
        _options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=lambda n, _r: answered.append(n)
    )
    assert resumed.report["resumed"] == 3 and len(answered) == 3
    assert sorted(answered + [json.loads(line)["n"] for line in lines[1:]]) == list(range(6))

    whole = run_eval(_options(fixtures_dir, tmp_path / "whole", 2), embedder=HashEmbedder())
    assert whole.report["resumed"] == 0
    assert _metrics(resumed.report) == _metrics(whole.report)
    assert [_scored(r) for r in resumed.results] == [_scored(r) for r in whole.results]
    rows = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == [r.answer for r in whole.results]

    # A finished run reruns without answering anything and writes the same report.
    again = run_eval(
        _options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=lambda n, _r: answered.append(n)
    )
    assert again.report["resumed"] == 6 and len(answered) == 3
    assert _metrics(again.report) == _metrics(whole.report)


def test_a_torn_last_line_is_answered_again(registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "torn"
    with pytest.raises(Interrupted):
        run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=_interrupt_after(2))
    with open(out / JOURNAL, "a", encoding="utf-8") as f:
        f.write('{"n": 5, "record": {"qid": "q')  # killed in the middle of a write
    run = run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder())
    assert run.report["resumed"] == 2
    assert [json.loads(x)["n"] for x in (out / JOURNAL).read_text().splitlines()[1:]].count(5) == 1


def test_resuming_with_other_options_is_refused(registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    with pytest.raises(Interrupted):
        run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=_interrupt_after(1))
    before = (out / JOURNAL).read_text()
    with pytest.raises(JournalError, match="max_new_tokens: 8 then, 4 now.*same options to resume"):
        run_eval(_options(fixtures_dir, out, 2, max_new_tokens=4), embedder=HashEmbedder())
    with pytest.raises(JournalError, match="batch_size: 2 then, 3 now"):
        run_eval(_options(fixtures_dir, out, 3), embedder=HashEmbedder())
    assert (out / JOURNAL).read_text() == before  # nothing already answered is lost
    (out / JOURNAL).write_text("not json\n")
    with pytest.raises(JournalError, match="line 1 of .* is not an answer record"):
        run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder())


def test_ask_many_answers_as_ask_and_reports_refused_questions(registry: Path, tmp_path: Path) -> None:
    from app.config import AppConfig
    from app.qa import QAError, QAService
    from retrieval.ingest import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "normans.md").write_text("The Normans gave their name to Normandy, a region in France.")
    (docs / "rivers.md").write_text("The Rhine flows from the Swiss Alps to the North Sea.")
    cfg = AppConfig.load()
    ingest(docs, cfg.paths.index_dir, HashEmbedder(), progress=False, **cfg.ingest_options())
    qa = QAService(cfg, embedder=HashEmbedder())
    questions = ["Where is Normandy?", "   ", "Where does the Rhine flow?", "Who were the Normans?"]
    batches = list(qa.ask_many(questions, batch_size=2))
    assert [[i for i, _r in b] for b in batches][0] == [1]  # refused before generation, reported first
    assert [len(b) for b in batches[1:]] == [2, 1]
    got = dict(pair for b in batches for pair in b)
    assert isinstance(got[1], QAError) and "empty" in str(got[1])
    for i in (0, 2, 3):
        alone = qa.ask(questions[i])
        assert (got[i].answer, got[i].passages, got[i].cited, got[i].citation_mode, got[i].finished) == (
            alone.answer,
            alone.passages,
            alone.cited,
            alone.citation_mode,
            alone.finished,
        )


def test_the_recorded_prompt_limit_is_the_serving_backends(
    registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit recorded is that of the backend that will answer: none on CUDA or for a version served by an
    OpenAI-compatible server, the CPU's otherwise; the trimming algorithm only where there is a limit."""
    from app.config import AppConfig
    from evaluation.runner import settings_info
    from model_store import hardware
    from model_store.registry import ModelRegistry

    reg = ModelRegistry(registry)
    cfg = AppConfig.load()
    monkeypatch.setattr(hardware, "cuda_state", lambda: (True, True))
    assert settings_info(cfg, EvalOptions("x"), HashEmbedder(), reg, "v0001")["prompt_token_limit"] is None
    monkeypatch.setattr(hardware, "cuda_state", lambda: (False, False))
    on_cpu = settings_info(cfg, EvalOptions("x"), HashEmbedder(), reg, "v0001")
    assert on_cpu["serving_backend"] == "transformers" and on_cpu["prompt_token_limit"] in (448, 704)
    # llamacpp configured, but this version has no GGUF: transformers serves it (on CUDA here), as load() does
    monkeypatch.setattr(hardware, "cuda_state", lambda: (True, True))
    llama = settings_info(cfg.with_(backend="llamacpp"), EvalOptions("x"), HashEmbedder(), reg, "v0001")
    assert llama["serving_backend"] == "transformers" and llama["prompt_token_limit"] is None
    # a version published as served elsewhere (an OpenAI-compatible server) prefills there: no limit on a CPU
    monkeypatch.setattr(hardware, "cuda_state", lambda: (False, False))
    served = reg.publish_folder(
        reg.get("v0001").path, {"kind": "base", "serving": {"backend": "openai"}}, make_current=False
    )
    remote = settings_info(cfg, EvalOptions("x"), HashEmbedder(), reg, served.name)
    assert remote["serving_backend"] == "openai" and remote["prompt_token_limit"] is None
    assert "trim_algorithm" not in remote and on_cpu["trim_algorithm"] == "v2"


def test_a_journal_from_before_the_serving_backend_was_recorded_still_resumes(
    registry: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    """An eval interrupted before an upgrade resumes after it where nothing that decides the answers changed;
    one whose prompts were trimmed by the older algorithm (v1) is refused, saying so."""
    out = tmp_path / "old"
    with pytest.raises(Interrupted):
        run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder(), on_result=_interrupt_after(2))
    lines = (out / JOURNAL).read_text().splitlines()
    header = json.loads(lines[0])
    current = dict(header["options"])
    assert current["serving_backend"] == "transformers" and current["backend"] == "transformers"

    def rewrite(**changes: Any) -> None:
        opts = {k: v for k, v in current.items() if k not in ("serving_backend", "trim_algorithm")}
        opts.update(changes)
        (out / JOURNAL).write_text("\n".join([json.dumps({**header, "options": opts}), *lines[1:]]) + "\n")

    # without serving_backend (as before it was recorded): the batched eval's backend says it
    rewrite(**({"trim_algorithm": current["trim_algorithm"]} if "trim_algorithm" in current else {}))
    assert run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder()).report["resumed"] == 2
    (out / JOURNAL).write_text("\n".join(lines) + "\n")
    rewrite()  # as the previous code wrote it: no serving_backend, no trim_algorithm
    if current.get("trim_algorithm"):  # a CPU: prompts over the limit were trimmed by v1, now by v2
        with pytest.raises(JournalError, match="trim_algorithm: 'v1' then, 'v2' now"):
            run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder())
    else:  # no limit: nothing was trimmed, nothing changed
        assert run_eval(_options(fixtures_dir, out, 2), embedder=HashEmbedder()).report["resumed"] == 2
