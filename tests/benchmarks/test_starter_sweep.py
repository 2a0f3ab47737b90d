"""benchmarks/starter_sweep.py: the variants' data, the validation rows, scoring, and answering through the app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import starter_sweep as W
from retrieval.prompt import NO_ANSWER, render_prompt
from training.starter import is_test_qid


def row(qid: str, kind: str, view: int = 0, answers: list[str] | None = None) -> dict:
    passages = [{"text": "The Seine flows through Paris.", "source": "paris.txt"}]
    target = "the Seine [1]." if kind == "answer" else NO_ANSWER
    return {
        "prompt": render_prompt("Which river flows through Paris?", passages),
        "completion": [{"role": "assistant", "content": target}],
        "meta": {
            "qid": qid,
            "kind": kind,
            "view": view,
            "answers": answers or (["the Seine"] if kind == "answer" else []),
        },
    }


def rows_of(n: int) -> list[dict]:
    out = []
    for i in range(n):
        kind = "answer" if i % 2 else "unanswerable"
        out += [row(f"q{i}", kind), row(f"q{i}:view1", kind, view=1)]
    return out


def test_a_one_view_variant_keeps_first_showings_and_its_share_of_unanswerables() -> None:
    rows = rows_of(40)
    one = W.variant_rows(rows, W.Variant("a", views=1, per_answer=0.5), seed=0)
    assert all(r["meta"]["view"] == 0 for r in one)
    kinds = [r["meta"]["kind"] for r in one]
    assert (kinds.count("answer"), kinds.count("unanswerable")) == (20, 10)
    two = W.variant_rows(rows, W.Variant("b", views=2, per_answer=1.0), seed=0)
    assert len(two) == 80


def test_validation_rows_are_the_held_back_questions_in_their_natural_mix() -> None:
    rows = rows_of(400)
    dev = W.dev_rows(rows, 0.1)
    assert dev and all(r["meta"]["view"] == 0 and is_test_qid(r["meta"]["qid"], 0.1) for r in dev)
    expected = sum(1 for r in rows if r["meta"]["view"] == 0 and is_test_qid(r["meta"]["qid"], 0.1))
    assert len(dev) == expected  # nothing balanced away


def test_derive_writes_every_variant_with_its_summary(tmp_path: Path) -> None:
    src = tmp_path / "v2.all.jsonl"
    W.write_rows(src, rows_of(100))
    (tmp_path / "v2.summary.json").write_text(json.dumps({"licence": "CC BY-SA 4.0", "split": {"seed": 0}}))
    counts = W.derive(src, tmp_path / "data", seed=0, test_fraction=0.1)
    for v in W.VARIANTS:
        summary = json.loads((tmp_path / "data" / f"{v.name}.summary.json").read_text())
        assert summary["licence"] == "CC BY-SA 4.0" and summary["views"] == v.views
        assert len(W.read_jsonl(tmp_path / "data" / f"{v.name}.jsonl")) == summary["rows"]
    assert sum(counts["dev"].values()) == len(W.read_jsonl(tmp_path / "data" / "dev.jsonl"))


def test_scoring_follows_squad2_rules() -> None:
    rows = [row("a", "answer"), row("b", "answer"), row("c", "unanswerable"), row("d", "off_topic")]
    m = W.score_answers(rows, ["the Seine [1].", NO_ANSWER, NO_ANSWER, "Paris [1]."])
    assert m["n"] == 4
    assert m["f1"] == pytest.approx(
        0.5
    )  # right, abstained on an answerable, abstained right, answered off-topic
    assert m["f1_answerable"] == pytest.approx(0.5) and m["answerable_abstained"] == pytest.approx(0.5)
    assert m["abstention_precision"] == pytest.approx(0.5) and m["abstention_recall"] == pytest.approx(0.5)


def test_train_command_passes_the_variants_settings(tmp_path: Path) -> None:
    v = W.Variant("wide", views=2, per_answer=0.2, overrides=("lora.r=16",))
    cmd = W.train_command(tmp_path / "m", tmp_path / "d", tmp_path / "o", v)
    assert cmd[cmd.index("--data") + 1].endswith("wide.jsonl") and cmd[cmd.index("--out") + 1].endswith(
        "wide"
    )
    assert cmd[-2:] == ["--set", "lora.r=16"] and "progress=false" in cmd


def test_validation_answers_come_from_the_apps_backend(tiny_llama_dir: Path) -> None:
    rows = [row("a", "answer"), row("b", "unanswerable")]
    answers = W.generate_answers(tiny_llama_dir, None, rows, batch=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert W.table_row("tiny", W.score_answers(rows, answers)).startswith("tiny | ")


def test_an_adapter_trained_off_registry_gets_the_bases_gguf_hash_only_if_the_weights_match(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from model_store.files import sha256_file

    base = tmp_path / "v0001"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")
    registry_base = SimpleNamespace(path=base, manifest={"gguf_sha256": "g"})
    for weights, expected in ((sha256_file(base / "model.safetensors"), "g"), ("other", None)):
        adapter = tmp_path / f"adapter-{expected}"
        adapter.mkdir()
        (adapter / "starter.json").write_text(
            json.dumps({"base": {"gguf_sha256": None, "safetensors_sha256": weights}})
        )
        W.fill_base(adapter, registry_base)
        assert json.loads((adapter / "starter.json").read_text())["base"]["gguf_sha256"] == expected


def test_guide_score_counts_right_answers_and_off_topic_abstentions() -> None:
    from evaluation.guide_questions import GUIDE_QUESTIONS, OFF_TOPIC, score_guide

    answers = {q: f"{phrases[0]} [1]." for q, phrases in GUIDE_QUESTIONS} | {q: NO_ANSWER for q in OFF_TOPIC}
    answers[GUIDE_QUESTIONS[0][0]] = NO_ANSWER  # an abstention is never right
    answers[OFF_TOPIC[0]] = "Paris [1]."
    assert score_guide(answers) == {"right": 9, "of": 10, "off_topic_abstained": 2, "off_topic": 3}


def test_results_record_the_cpu_and_its_load() -> None:
    machine = W.machine_now()
    assert machine["cpu"] and isinstance(machine["flags"], list) and len(machine["load_average"]) == 3
