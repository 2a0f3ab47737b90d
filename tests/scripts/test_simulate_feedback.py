"""The simulated annotator: F1 rankings, corrections citing the passage, simulated marking, the export's pairs.

The ranking logic is checked with fixed candidate texts (QAService.candidates patched) so the F1 order is known by
hand; one run samples from the tiny random Llama to prove the real path (retrieve, batched sampling, store) works.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.config import AppConfig
from app.qa import Candidate, QAService
from evaluation.formats import QAExample
from evaluation.simulate import (
    SESSION,
    SimulationError,
    SimulationOptions,
    candidate_f1,
    correction_text,
    ensure_indexed,
    f1_ranking,
    main,
    mix_unanswerable,
    pick_corrected,
    simulate,
)
from feedback_store.export import export_snapshot
from feedback_store.store import FeedbackStore
from model_store.registry import ModelRegistry
from retrieval.embedder import HashEmbedder
from retrieval.prompt import NO_ANSWER
from retrieval.types import Passage
from settings.paths import Paths

TOWER = (
    "The Zorbium Tower in Kelvale opened on 14 March 1893. It is 212 metres tall and was designed by the "
    "engineer Alma Pettersen."
)
BREAD = "Quillbread is baked from fermented oat flour and blue sorrel. The dough rests for nine hours."
SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Zorbium_Tower",
            "paragraphs": [
                {
                    "context": TOWER,
                    "qas": [
                        {
                            "id": "q1",
                            "question": "When did the Zorbium Tower open?",
                            "answers": [{"text": "14 March 1893", "answer_start": 40}],
                        },
                        {
                            "id": "q2",
                            "question": "Who designed the Zorbium Tower?",
                            "answers": [{"text": "Alma Pettersen", "answer_start": 99}],
                        },
                    ],
                }
            ],
        },
        {
            "title": "Quillbread",
            "paragraphs": [
                {
                    "context": BREAD,
                    "qas": [
                        {
                            "id": "q3",
                            "question": "How long does quillbread dough rest?",
                            "answers": [{"text": "nine hours", "answer_start": 83}],
                        },
                        {
                            "id": "q4",
                            "question": "Who invented quillbread?",
                            "answers": [],
                            "is_impossible": True,
                        },
                    ],
                }
            ],
        },
    ],
}

# Fixed candidates and their F1 against the gold, computed by hand (SQuAD normalisation, "[1]" removed):
#   q1 gold "14 march 1893": "it opened on 14 march 1893" P=3/6 R=1 -> 0.667; "in 1893" P=1/2 R=1/3 -> 0.4; 0; 0
#   q2 gold "alma pettersen": 1.0, 1.0 (a tie), 0, 0
#   q3 gold "nine hours": all 0 -> both bad
FIXED = {
    "When did the Zorbium Tower open?": [
        "It opened on 14 March 1893 [1].",
        "In 1893.",
        "It is tall.",
        "Paris",
    ],
    "Who designed the Zorbium Tower?": ["Alma Pettersen.", "Alma Pettersen!", "Nobody knows", "Kelvale"],
    "How long does quillbread dough rest?": ["Paris", "Rome", "London", "Berlin"],
    "Who invented quillbread?": [NO_ANSWER, "Alma Pettersen", "Nobody", "Rome"],
}
# The expected order as candidate positions (0-based), best first; None = both bad.
EXPECTED = {
    "When did the Zorbium Tower open?": [[0], [1], [2, 3]],
    "Who designed the Zorbium Tower?": [[0, 1], [2, 3]],
    "How long does quillbread dough rest?": None,
}


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps(SQUAD), encoding="utf-8")
    return path


@pytest.fixture
def registry(ragqa_home: Path, tiny_llama_dir: Path) -> ModelRegistry:
    reg = ModelRegistry(ragqa_home / "models")
    reg.publish_folder(tiny_llama_dir, {"kind": "base"})
    return reg


@pytest.fixture
def fixed_candidates(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """QAService.candidates returns FIXED texts; records what it was given (the passages must be the shown ones)."""
    calls: list[dict] = []

    def candidates(self, question, passages, history=(), n=None, seed=None):  # noqa: ANN001, ANN202
        calls.append({"question": question, "passages": list(passages), "n": n, "seed": seed})
        return [Candidate(t, "v0001", {"seed": seed, "fixed": True}, 1.0) for t in FIXED[question][:n]]

    def candidates_batch(self, asked, n, seeds):  # noqa: ANN001, ANN202
        return [candidates(self, q, p, n=n, seed=s) for (q, p), s in zip(asked, seeds, strict=True)]

    monkeypatch.setattr(QAService, "candidates", candidates)
    monkeypatch.setattr(QAService, "candidates_batch", candidates_batch)
    return calls


def _config() -> AppConfig:
    return AppConfig.load(max_new_tokens=8)


def _options(qa_file: Path, **kw) -> SimulationOptions:  # noqa: ANN003
    return SimulationOptions(qa=qa_file, progress=False, **kw)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- pure logic --------------------------------------------------------------------------------------------
def test_f1_ranking_groups_ties_and_all_zero_is_both_bad() -> None:
    assert f1_ranking([10, 11, 12, 13], [0.4, 2 / 3, 0.0, 0.0]) == ([[11], [10], [12, 13]], False)
    assert f1_ranking([1, 2], [1.0, 1.0]) == ([[1, 2]], False)
    assert f1_ranking([1, 2, 3], [0.0, 0.0, 0.0]) == ([], True)
    # float noise is not a preference
    assert f1_ranking([1, 2], [0.1 + 0.2, 0.3]) == ([[1, 2]], False)


def test_candidate_f1_uses_squad_rules() -> None:
    ex = QAExample("q", "When?", ("14 March 1893",), False)
    assert candidate_f1("It opened on 14 March 1893 [1].", ex) == pytest.approx(2 / 3)
    assert candidate_f1("In 1893.", ex) == pytest.approx(0.4)
    assert candidate_f1(NO_ANSWER, ex) == 0.0  # abstaining on an answerable question scores 0
    impossible = QAExample("q", "Who?", (), True)
    assert candidate_f1(NO_ANSWER, impossible) == 1.0
    assert candidate_f1("Alma Pettersen", impossible) == 0.0


def test_correction_cites_the_first_shown_passage_with_the_gold() -> None:
    ex = QAExample("q", "When?", ("14 March 1893",), False)
    passages = [Passage(1, "a", "bread.txt", BREAD, 0.9), Passage(2, "b", "tower.txt", TOWER, 0.5)]
    assert correction_text(ex, passages) == "14 March 1893 [2]."
    assert correction_text(ex, passages[:1]) == "14 March 1893"  # no shown passage contains it: plain gold
    assert correction_text(QAExample("q", "Who?", (), True), passages) == NO_ANSWER


def test_pick_corrected_takes_the_rounded_share_and_depends_on_the_seed() -> None:
    assert len(pick_corrected(10, 0.3, seed=1)) == 3
    assert pick_corrected(10, 0.3, seed=1) == pick_corrected(10, 0.3, seed=1)
    assert len(pick_corrected(3, 0.0, seed=0)) == 0 and len(pick_corrected(3, 1.0, seed=0)) == 3
    with pytest.raises(SimulationError, match="correct-fraction"):
        pick_corrected(3, 1.5, seed=0)


def test_the_unanswerable_share_of_the_questions_asked_is_chosen() -> None:
    examples = [QAExample(f"q{i}", f"Q{i}?", () if i % 2 else ("a",), bool(i % 2)) for i in range(40)]  # 1/2
    picked = mix_unanswerable(examples, 0.25, 12, seed=0)
    assert len(picked) == 12 and sum(e.unanswerable for e in picked) == 3
    assert [int(e.qid[1:]) for e in picked] == sorted(int(e.qid[1:]) for e in picked)  # file order kept
    assert (
        mix_unanswerable(examples, 0.25, 12, seed=0) == picked != mix_unanswerable(examples, 0.25, 12, seed=1)
    )
    everything = mix_unanswerable(examples, 0.25, None, seed=0)  # the largest mix: all 20 answerable + 6
    assert len(everything) == 26 and sum(e.unanswerable for e in everything) == 6
    assert not any(e.unanswerable for e in mix_unanswerable(examples, 0.0, 10, seed=0))
    with pytest.raises(SimulationError, match="need 30 unanswerable and 10 answerable.*leave 20 and 20"):
        mix_unanswerable(examples, 0.75, 40, seed=0)
    with pytest.raises(SimulationError, match="within \\[0, 1\\]"):
        mix_unanswerable(examples, 1.5, 10, seed=0)


# ---- the whole simulation -------------------------------------------------------------------------------
def test_rankings_follow_f1_corrections_and_export(
    registry: ModelRegistry, qa_file: Path, fixed_candidates: list[dict], tmp_path: Path
) -> None:
    cfg = _config()
    summary = simulate(
        _options(qa_file, only_answerable=True, correct_fraction=2 / 3, seed=3),
        config=cfg,
        embedder=HashEmbedder(),
    )
    assert (summary.questions, summary.candidates, summary.rankings) == (3, 12, 3)
    assert summary.both_bad == 1 and summary.corrections == 2 and not summary.errors
    assert [c["n"] for c in fixed_candidates] == [4, 4, 4]

    store = FeedbackStore.open(cfg.paths.feedback_db)
    records = list(store.iter_interactions())
    assert len(records) == 3
    corrections = 0
    for rec, call in zip(records, fixed_candidates, strict=True):
        assert rec.session_id == SESSION
        # the passages recorded are the ones the candidates were generated from
        assert [p["text"] for p in rec.passages] == [p.text for p in call["passages"]]
        (ranking,) = rec.rankings
        assert ranking.session_id == SESSION
        ids = [c.id for c in rec.candidates]
        expected = EXPECTED[rec.question]
        if expected is None:
            assert ranking.both_bad and ranking.order == ()
        else:
            assert not ranking.both_bad
            assert [list(g) for g in ranking.order] == [[ids[i] for i in g] for g in expected]
        for corr in rec.corrections:
            corrections += 1
            assert corr.session_id == SESSION and sorted(corr.replaces) == sorted(ids)
            gold = {"q1": "14 March 1893", "q2": "Alma Pettersen", "q3": "nine hours"}
            match = re.fullmatch(r"(.+) \[(\d)\]\.", corr.text)
            assert match, corr.text
            assert match.group(1) in gold.values()
            cited = next(p for p in rec.passages if p["rank"] == int(match.group(2)))
            assert match.group(1) in cited["text"]
    assert corrections == 2
    stats = store.stats()
    assert stats["raters"] == stats["simulated_raters"] == 1

    manifest = export_snapshot(store, tmp_path / "export", test_fraction=0.0)
    pairs = _read_jsonl(manifest.path("preferences", "train"))
    sft = _read_jsonl(manifest.path("sft", "train"))
    # rankings: q1 gives 1x1 + 1x2 + 1x2 = 5 pairs, q2 gives 2x2 = 4, q3 (both bad) none; corrections 2 x 4
    assert len(pairs) == 5 + 4 + 8
    assert len(sft) == 2
    assert all(row["meta"]["simulated"] for row in pairs + sft)
    by_source = [row["meta"]["source"] for row in pairs]
    assert by_source.count("ranking") == 9 and by_source.count("correction") == 8
    q1 = [
        r
        for r in pairs
        if "Zorbium Tower open" in r["prompt"][-1]["content"] and r["meta"]["source"] == "ranking"
    ]
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in q1} == {
        ("It opened on 14 March 1893 [1].", "In 1893."),
        ("It opened on 14 March 1893 [1].", "It is tall."),
        ("It opened on 14 March 1893 [1].", "Paris"),
        ("In 1893.", "It is tall."),
        ("In 1893.", "Paris"),
    }
    assert TOWER in q1[0]["prompt"][-1]["content"]  # the passage shown is in the prompt trained on
    store.close()


def test_real_sampling_from_the_tiny_model_end_to_end(registry: ModelRegistry, qa_file: Path) -> None:
    cfg = _config()
    summary = simulate(
        _options(qa_file, k_candidates=2, correct_fraction=1.0), config=cfg, embedder=HashEmbedder()
    )
    assert summary.questions == 4 and summary.candidates == 8 and summary.rankings == 4
    store = FeedbackStore.open(cfg.paths.feedback_db)
    for rec in store.iter_interactions():
        assert len(rec.candidates) == 2
        assert all(c.model_version == "v0001" and c.sampling for c in rec.candidates)
        # the stored ranking is the F1 ranking of the texts actually sampled
        ex_answers = {
            "When did the Zorbium Tower open?": ("14 March 1893",),
            "Who designed the Zorbium Tower?": ("Alma Pettersen",),
            "How long does quillbread dough rest?": ("nine hours",),
            "Who invented quillbread?": (),
        }[rec.question]
        ex = QAExample("x", rec.question, ex_answers, not ex_answers)
        order, both_bad = f1_ranking(
            [c.id for c in rec.candidates], [candidate_f1(c.text, ex) for c in rec.candidates]
        )
        (ranking,) = rec.rankings
        assert ranking.both_bad == both_bad and [list(g) for g in ranking.order] == order
        if not ex_answers:  # the unanswerable question is corrected with the abstention sentence
            assert [c.text for c in rec.corrections] in ([NO_ANSWER], [])
    assert summary.corrections >= 3  # every question, unless a sampled answer equalled the correction
    store.close()


def test_article_filters_and_the_index_is_not_rebuilt(
    registry: ModelRegistry, qa_file: Path, fixed_candidates: list[dict]
) -> None:
    cfg = _config()
    s1 = simulate(
        _options(qa_file, articles=("Quillbread",), only_answerable=True), config=cfg, embedder=HashEmbedder()
    )
    assert s1.questions == 1 and [c["question"] for c in fixed_candidates] == [
        "How long does quillbread dough rest?"
    ]
    s2 = simulate(_options(qa_file, exclude_articles=("Quillbread",)), config=cfg, embedder=HashEmbedder())
    assert s2.questions == 2
    # both articles' contexts are now indexed; a third run indexes nothing
    from evaluation.formats import load_qa

    dataset = load_qa(qa_file)
    assert ensure_indexed(dataset, dataset.examples, cfg.paths.index_dir, cfg, HashEmbedder()) == 0
    with pytest.raises(SimulationError, match="no article titled 'Nope'"):
        simulate(_options(qa_file, articles=("Nope",)), config=cfg, embedder=HashEmbedder())


def test_an_index_with_other_documents_is_not_emptied(
    registry: ModelRegistry, qa_file: Path, tmp_path: Path, fixed_candidates: list[dict]
) -> None:
    from retrieval.ingest import ingest

    cfg = _config()
    docs = tmp_path / "mine"
    docs.mkdir()
    (docs / "notes.md").write_text("My own notes about gardening and tomatoes.")
    ingest(docs, cfg.paths.index_dir, HashEmbedder(), progress=False)
    with pytest.raises(SimulationError, match="--index"):
        simulate(_options(qa_file), config=cfg, embedder=HashEmbedder())
    # a separate index works and leaves the user's index alone
    summary = simulate(_options(qa_file, index=tmp_path / "sim-index"), config=cfg, embedder=HashEmbedder())
    assert summary.questions == 4
    from retrieval.index import HybridIndex

    assert set(HybridIndex.open(cfg.paths.index_dir).files) == {"notes.md"}
    assert len(HybridIndex.open(tmp_path / "sim-index").files) == 2


def test_cli_reports_bad_input_clearly(
    ragqa_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["--qa", str(tmp_path / "missing.json"), "--batch"]) == 1
    assert "missing.json does not exist" in capsys.readouterr().err
    assert main(["--qa", str(tmp_path / "missing.json"), "--k-candidates", "5"]) == 1
    assert "between 2 and 4" in capsys.readouterr().err


def test_candidates_are_one_batched_generate_per_question_or_per_group(
    registry: ModelRegistry, qa_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked one by one, the k candidates of a question come from ONE generate over the prompt
    (num_return_sequences=k), never k generate calls; asked in groups, one generate samples every question's k
    candidates (each prompt prefilled once, its cache repeated k times). The records keep their shape."""
    from transformers import LlamaForCausalLM

    calls: list[tuple[int, int]] = []
    generate = LlamaForCausalLM.generate

    def recorded(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append((kwargs["input_ids"].shape[0], kwargs.get("num_return_sequences", 1)))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "generate", recorded)
    cfg = _config()
    summary = simulate(_options(qa_file, k_candidates=3, batch_size=1), config=cfg, embedder=HashEmbedder())
    assert summary.questions == 4 and summary.candidates == 12
    assert calls == [(1, 3)] * 4  # one prompt row, three sequences from it, once per question
    store = FeedbackStore.open(cfg.paths.feedback_db)
    for rec in store.iter_interactions():
        assert [c.sampling["sequence_index"] for c in rec.candidates] == [0, 1, 2]
        assert {c.sampling["num_return_sequences"] for c in rec.candidates} == {3}
    store.close()

    calls.clear()
    other = _config().with_(paths=Paths(cfg.paths.home.parent / "grouped"))
    _publish_tiny(other, registry)
    summary = simulate(_options(qa_file, k_candidates=3, batch_size=3), config=other, embedder=HashEmbedder())
    assert summary.questions == 4 and summary.candidates == 12
    assert calls == [(9, 1), (1, 3)]  # 3 questions x 3 rows in one generate, then the last question alone
    with FeedbackStore.open(other.paths.feedback_db) as store:
        batch_index = [
            [c.sampling.get("batch_index") for c in rec.candidates] for rec in store.iter_interactions()
        ]
    assert batch_index == [[0] * 3, [1] * 3, [2] * 3, [None] * 3]


def _publish_tiny(cfg: AppConfig, registry: ModelRegistry) -> None:
    """Publish the same tiny model as `registry`'s v0001 in another home's registry."""
    ModelRegistry(cfg.paths.models_dir).publish_folder(registry.get("v0001").path, {"kind": "base"})


def _records(cfg: AppConfig) -> list:
    with FeedbackStore.open(cfg.paths.feedback_db) as store:
        return list(store.iter_interactions())


def test_grouped_simulation_records_the_same_rows_as_one_by_one(
    registry: ModelRegistry, qa_file: Path
) -> None:
    """Same questions, passages, candidate count and labels, settings, F1 ranking rule and corrections; only the
    sampled texts (and the batch's place in the sampling record) may differ."""
    alone = _config()
    s1 = simulate(
        _options(qa_file, correct_fraction=0.5, seed=2, batch_size=1), config=alone, embedder=HashEmbedder()
    )
    grouped = _config().with_(paths=Paths(alone.paths.home.parent / "grouped"))
    _publish_tiny(grouped, registry)
    s2 = simulate(
        _options(qa_file, correct_fraction=0.5, seed=2, batch_size=4), config=grouped, embedder=HashEmbedder()
    )
    assert (s1.questions, s1.candidates, s1.rankings, s1.corrections) == (4, 16, 4, 2)
    assert (s2.questions, s2.candidates, s2.rankings, s2.corrections) == (4, 16, 4, 2)
    answers = {
        q["question"]: tuple(a["text"] for a in q["answers"])
        for a in SQUAD["data"]
        for p in a["paragraphs"]
        for q in p["qas"]
    }
    batch_keys = {"batch_index", "batch_prompts"}
    r1, r2 = _records(alone), _records(grouped)
    assert [r.question for r in r1] == [r.question for r in r2]
    for a, b in zip(r1, r2, strict=True):
        assert a.passages == b.passages and a.session_id == b.session_id == SESSION
        assert [c.label for c in a.candidates] == [c.label for c in b.candidates] == ["A", "B", "C", "D"]
        assert {c.model_version for c in a.candidates + b.candidates} == {"v0001"}
        for ca, cb in zip(a.candidates, b.candidates, strict=True):
            settings_a = {k: v for k, v in ca.sampling.items() if k != "seed"}
            settings_b = {k: v for k, v in cb.sampling.items() if k not in batch_keys | {"seed"}}
            assert settings_a == settings_b
            assert set(cb.sampling) - set(ca.sampling) == batch_keys and cb.sampling["batch_prompts"] == 4
        ex = QAExample("x", a.question, answers[a.question], not answers[a.question])
        for rec in (a, b):  # the ranking rule applied to the texts each run sampled
            order, both_bad = f1_ranking(
                [c.id for c in rec.candidates], [candidate_f1(c.text, ex) for c in rec.candidates]
            )
            (ranking,) = rec.rankings
            assert (ranking.both_bad, [list(g) for g in ranking.order]) == (both_bad, order)
            assert ranking.session_id == SESSION
        assert [(c.text, c.session_id) for c in a.corrections] == [
            (c.text, c.session_id) for c in b.corrections
        ]
        for rec in (a, b):
            for corr in rec.corrections:
                assert sorted(corr.replaces) == sorted(c.id for c in rec.candidates)


def test_an_interrupted_run_resumes_without_asking_twice(
    registry: ModelRegistry, qa_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evaluation.simulate as sim

    cfg = _config()
    recorded = sim.record_one
    count = {"n": 0}

    def crash_after_two(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if count["n"] == 2:
            raise KeyboardInterrupt  # the process is stopped half way through a group
        count["n"] += 1
        return recorded(*args, **kwargs)

    monkeypatch.setattr(sim, "record_one", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        simulate(_options(qa_file, batch_size=4), config=cfg, embedder=HashEmbedder())
    assert len(_records(cfg)) == 2
    monkeypatch.setattr(sim, "record_one", recorded)
    summary = simulate(_options(qa_file, batch_size=4), config=cfg, embedder=HashEmbedder())
    assert (summary.questions, summary.skipped) == (2, 2)
    questions = [r.question for r in _records(cfg)]
    assert sorted(questions) == sorted(
        {q["question"] for a in SQUAD["data"] for p in a["paragraphs"] for q in p["qas"]}
    )
    again = simulate(_options(qa_file, batch_size=4), config=cfg, embedder=HashEmbedder())
    assert (again.questions, again.skipped) == (0, 4) and len(_records(cfg)) == 4
    assert "4 questions recorded by an earlier run skipped" in again.text()
