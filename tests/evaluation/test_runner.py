"""`ragqa eval` / `compare` / `eval-rm` end to end on tiny fixtures, with a tiny random Llama as the generator.

Answers of a random model are garbage: these tests assert structure, bookkeeping and retrieval numbers, never
answer quality.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evaluation.formats import load_qa
from evaluation.runner import (
    EvalError,
    EvalOptions,
    ExampleResult,
    RMOptions,
    aggregate,
    run_compare,
    run_eval,
    run_eval_rm,
    select_examples,
    write_corpus,
)
from retrieval.embedder import HashEmbedder
from retrieval.prompt import NO_ANSWER
from retrieval.types import Passage

REPORT_KEYS = {"kind", "dataset", "model", "settings", "metrics", "definitions", "charts", "examples_file"}


def _read(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_eval_end_to_end(tiny_registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = run_eval(  # one ask per question: the path with per-answer latency
        EvalOptions(fixtures_dir / "squad_v2.json", out_dir=out, progress=False, batch_size=1),
        embedder=HashEmbedder(),
    )
    for name in (
        "report.json",
        "report.md",
        "examples.jsonl",
        "answers.png",
        "recall_at_k.png",
        "latency.png",
    ):
        assert (out / name).stat().st_size > 0, name
    report = _read(out)
    assert set(report) >= REPORT_KEYS
    assert report["model"]["version"] == "v0001"
    m = report["metrics"]
    assert set(m) == {"counts", "retrieval", "answers", "latency_ms"}
    assert m["counts"] == {
        "questions": 6,
        "answered_ok": 6,
        "errors": 0,
        "answerable": 5,
        "unanswerable": 1,
        "with_gold_passage": 6,
    }
    assert {
        "em",
        "f1",
        "f1_answerable",
        "contains_gold_rate",
        "citation_correctness",
        "abstention_precision",
        "abstention_recall",
        "mean_answer_words",
    } <= set(m["answers"])
    assert m["latency_ms"]["total_p50"] > 0
    # Retrieval is scored against the question's own context file: check every rank by hand from the ranking.
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        expected = (
            row["ranking"].index(row["gold_source"]) + 1 if row["gold_source"] in row["ranking"] else None
        )
        assert row["first_gold_rank"] == expected
    ranks = [row["first_gold_rank"] for row in rows]
    assert m["retrieval"]["recall@1"] == sum(r == 1 for r in ranks) / 6
    # The fixture's questions share rare words only with their own paragraph: BM25 puts it first every time.
    assert ranks == [1] * 6
    assert m["retrieval"]["mrr"] == 1.0
    assert "| MRR |" in (out / "report.md").read_text()
    assert "![recall@k](recall_at_k.png)" in (out / "report.md").read_text()
    assert len(run.results) == 6


def test_eval_other_version_does_not_switch_current(
    tiny_registry: Path, fixtures_dir: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in tiny_registry.iterdir())
    run = run_eval(
        EvalOptions(
            fixtures_dir / "squad_v2.json",
            model="v0002",
            limit=2,
            seed=1,
            out_dir=tmp_path / "o",
            progress=False,
        ),
        embedder=HashEmbedder(),
    )
    assert run.report["model"]["version"] == "v0002"
    assert {r.model_version for r in run.results} == {"v0002"}
    assert os.readlink(tiny_registry / "current") == "v0001"
    assert sorted(p.name for p in tiny_registry.iterdir()) == before
    assert run.report["dataset"]["questions_evaluated"] == 2


def test_eval_against_an_existing_index(tiny_registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    """With --index the gold passage is recognised as a chunk lying inside the question's context."""
    from retrieval.ingest import ingest

    ds = load_qa(fixtures_dir / "squad_v2.json")
    corpus = tmp_path / "docs"
    write_corpus(ds, corpus)
    for i, p in enumerate(sorted(corpus.iterdir())):  # other file names than the eval's own corpus
        p.rename(corpus / f"doc{i}.md")
    embedder = HashEmbedder()
    ingest(corpus, tmp_path / "index", embedder, progress=False)
    run = run_eval(
        EvalOptions(
            fixtures_dir / "squad_v2.json",
            index_dir=tmp_path / "index",
            out_dir=tmp_path / "o",
            progress=False,
        ),
        embedder=embedder,
    )
    assert run.report["metrics"]["retrieval"]["recall@1"] == 1.0
    assert all(r.ranking[0].startswith("doc") for r in run.results)


def test_eval_errors_are_clear(tiny_registry: Path, fixtures_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="no model version 'v0009'"):
        run_eval(
            EvalOptions(fixtures_dir / "squad_v2.json", model="v0009", progress=False),
            embedder=HashEmbedder(),
        )
    with pytest.raises(EvalError, match="not an index"):
        run_eval(
            EvalOptions(fixtures_dir / "squad_v2.json", index_dir=tmp_path, progress=False),
            embedder=HashEmbedder(),
        )


def test_plain_jsonl_without_contexts_needs_an_index(tiny_registry: Path, tmp_path: Path) -> None:
    qa = tmp_path / "q.jsonl"
    qa.write_text(json.dumps({"question": "Where?", "answers": ["here"], "source": "a.md"}) + "\n")
    with pytest.raises(EvalError, match="pass --index"):
        run_eval(EvalOptions(qa, progress=False), embedder=HashEmbedder())


def test_limit_picks_a_seeded_subset_in_file_order(fixtures_dir: Path) -> None:
    examples = load_qa(fixtures_dir / "squad_v2.json").examples
    a = select_examples(examples, 3, seed=7)
    assert a == select_examples(examples, 3, seed=7)
    assert [e.qid for e in a] == sorted(e.qid for e in a)
    assert select_examples(examples, 100, seed=0) == examples
    assert {tuple(e.qid for e in select_examples(examples, 3, s)) for s in range(10)} != {
        tuple(e.qid for e in a)
    }


def _result(
    qid: str,
    answer: str,
    golds: tuple[str, ...],
    rank: int | None,
    cited: list[int],
    texts: list[str],
    gated: bool = False,
) -> ExampleResult:
    """A scored result built by hand (what answer_examples produces from one ask)."""
    from evaluation import metrics as M
    from evaluation.formats import QAExample
    from evaluation.runner import _score_answer

    class Asked:
        def __init__(self) -> None:
            self.answer = answer
            self.passages = [Passage(i + 1, f"c{i}", f"s{i}", t, 1.0) for i, t in enumerate(texts)]
            self.cited = cited
            self.citation_mode = "model" if cited else "none"
            self.timings_ms = {"retrieve": 1.0, "first_token": 10.0, "total": 100.0}
            self.finished = True
            self.model_version = "v0001"
            # the relevance gate's abstention carries its record; a model's answer does not
            self.generation = {"relevance_gate": {"best_cosine": 0.1}} if gated else {}

    r = ExampleResult(QAExample(qid, "q?", golds, not golds), gold_known=True, first_gold_rank=rank)
    _score_answer(r, Asked())
    assert r.scores == M.score_answer(answer, golds, not golds)
    return r


def test_aggregate_hand_computed() -> None:
    results = [
        _result("a", "Paris [1]", ("Paris",), 1, [1], ["Paris is in France", "x"]),  # EM 1, cite correct
        _result("b", "Lyon [2]", ("Paris",), 3, [2], ["Paris is in France", "Lyon"]),  # EM 0, cite wrong
        _result("c", NO_ANSWER, ("Paris",), None, [], ["x"]),  # abstained on answerable
        _result("d", NO_ANSWER, (), 2, [], ["x"], gated=True),  # correct abstention, by the relevance gate
        _result("e", "Rome", (), 1, [], ["x"]),  # should have abstained
    ]
    m = aggregate(results, depth=3)
    a, r = m["answers"], m["retrieval"]
    assert a["em"] == pytest.approx(2 / 5)  # a and d
    assert a["f1_answerable"] == pytest.approx(1 / 3)
    assert a["contains_gold_rate"] == pytest.approx(1 / 3)
    assert a["citation_rate"] == 1.0  # both answered answerable questions cite
    assert a["citation_correctness"] == 0.5
    assert a["abstention_precision"] == 0.5 and a["abstention_recall"] == 0.5
    assert a["no_answer_accuracy"] == 0.5
    assert a["relevance_gated_rate"] == pytest.approx(1 / 5)
    assert [x.gated for x in results] == [False, False, False, True, False]
    assert r["recall@1"] == pytest.approx(2 / 5)
    assert r["recall_curve"] == pytest.approx([2 / 5, 3 / 5, 4 / 5])
    assert r["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 2 + 1) / 5)
    assert m["latency_ms"]["total_p95"] == 100.0


def test_compare_two_versions(
    tiny_registry: Path, fixtures_dir: Path, tmp_path: Path, tiny_rm_dir: Path
) -> None:
    out = tmp_path / "cmp"
    run = run_compare(
        "v0001",
        "v0002",
        EvalOptions(fixtures_dir / "squad_v2.json", out_dir=out, progress=False),
        embedder=HashEmbedder(),
    )
    report = _read(out)
    assert report["versions"] == ["v0001", "v0002"]
    assert set(report["metrics"]) == {"v0001", "v0002"}
    w = report["win_rate"]
    assert w["judge"] == "F1" and w["a"] + w["b"] + w["tie"] == 6
    for name in ("report.md", "answers.png", "wins.png", "latency.png"):
        assert (out / name).is_file()
    assert {r.model_version for r in run.results} == {"v0001", "v0002"}
    for d in report["differences"]:
        assert d["answer_a"] != d["answer_b"]
    # F1 of each version with its CI, and B - A paired over the questions.
    f1 = {v: [r.scores["f1"] for r in run.results if r.model_version == v] for v in ("v0001", "v0002")}
    for v in f1:
        assert report["f1_ci"][v]["mean"] == pytest.approx(sum(f1[v]) / 6)
        assert report["f1_ci"][v]["ci"][0] <= report["f1_ci"][v]["mean"] <= report["f1_ci"][v]["ci"][1]
    diff = report["f1_difference"]
    assert diff["n"] == 6 and diff["diff"] == pytest.approx((sum(f1["v0002"]) - sum(f1["v0001"])) / 6)
    assert diff["ci"][0] <= diff["diff"] <= diff["ci"][1]
    assert "F1 v0002 - v0001 (95% paired CI, n=6)" in (out / "report.md").read_text()
    assert {p.name for p in out.glob("answers-*.jsonl")} == {"answers-v0001.jsonl", "answers-v0002.jsonl"}
    # With a reward model the judge is the RM, and every question gets both scores.
    run = run_compare(
        "v0001",
        "v0002",
        EvalOptions(fixtures_dir / "squad_v2.json", limit=3, out_dir=tmp_path / "c2", progress=False),
        rm=tiny_rm_dir,
        embedder=HashEmbedder(),
    )
    assert run.report["win_rate"]["judge"] == "reward model"
    assert run.report["reward_model"]["path"] == str(tiny_rm_dir)


def test_eval_rm_on_hh_pairs(fixtures_dir: Path, tmp_path: Path, tiny_rm_dir: Path) -> None:
    from evaluation.formats import load_pairs
    from model_store.reward import RewardScorer

    out = tmp_path / "rm"
    report = run_eval_rm(
        RMOptions(fixtures_dir / "hh_pairs.jsonl", rm=tiny_rm_dir, out_dir=out, progress=False)
    )
    for name in ("report.json", "report.md", "rm_accuracy_by_length.png", "rm_margins.png"):
        assert (out / name).is_file()
    m = report["metrics"]
    assert m["pairs"] == 2 and sum(b["n"] for b in m["by_length_diff"]) == 2
    # the accuracy is what the scorer says, pair by pair
    _, pairs = load_pairs(fixtures_dir / "hh_pairs.jsonl")
    scorer = RewardScorer(tiny_rm_dir)
    prompts = [list(p.prompt) for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs])
    rejected = scorer.score(prompts, [p.rejected for p in pairs])
    assert m["accuracy"] == sum(c > r for c, r in zip(chosen, rejected, strict=True)) / 2
    assert m["mean_margin"] == pytest.approx(
        sum(c - r for c, r in zip(chosen, rejected, strict=True)) / 2, abs=1e-4
    )


def test_eval_rm_without_a_reward_model_says_what_to_do(tiny_registry: Path, fixtures_dir: Path) -> None:
    with pytest.raises(EvalError, match="pass --rm PATH"):
        run_eval_rm(RMOptions(fixtures_dir / "hh_pairs.jsonl", progress=False))


def test_reward_scores_do_not_depend_on_batch_padding(tiny_rm_dir: Path) -> None:
    from model_store.reward import RewardScorer

    scorer = RewardScorer(tiny_rm_dir, batch_size=4)
    prompts = [[{"role": "user", "content": "What is a good name for a cat?"}]] * 3
    answers = ["Luna.", "Many people like Luna or Milo, and some like longer names.", "Milo"]
    batched = scorer.score(prompts, answers)
    single = [scorer.score([p], [a])[0] for p, a in zip(prompts, answers, strict=True)]
    assert batched == pytest.approx(single, abs=0.02)
    assert len(set(round(s, 4) for s in single)) == 3  # different texts, different scores
