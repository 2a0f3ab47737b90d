"""The starter adapter: its targets, the data balance, publishing it on the base, and the shipped files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from evaluation import starter_data as D
from model_store.files import sha256_file
from model_store.registry import ModelRegistry
from model_store.starter import STARTER_DIR, starter_card, starter_version, unfit_reason
from retrieval.prompt import NO_ANSWER
from retrieval.types import Passage
from training import starter as S


def passage(text: str, rank: int) -> Passage:
    return Passage(rank=rank, chunk_id=str(rank), source=f"doc{rank}.txt", text=text, score=1.0)


# ---- targets ---------------------------------------------------------------------------------------------------
def test_answer_cites_the_first_shown_passage_that_holds_the_gold() -> None:
    shown = [passage("Paris is big.", 1), passage("The Seine flows through Paris.", 2)]
    assert D.target_answer(["the Seine"], False, shown) == ("the Seine [2].", "answer")


def test_the_most_frequent_gold_answer_is_the_target() -> None:
    assert D.gold_answer(["1066", "in 1066", "in 1066", "1066 AD"]) == "in 1066"
    assert D.gold_answer(["a", "b"]) == "a"  # a tie: the first


def test_unanswerable_and_missed_questions_abstain() -> None:
    shown = [passage("Paris is big.", 1)]
    assert D.target_answer([], True, shown) == (NO_ANSWER, "unanswerable")
    assert D.target_answer(["the Seine"], False, shown) == (NO_ANSWER, "retrieval_miss")


def test_balance_keeps_every_answer_and_samples_unanswerables_down() -> None:
    rows = [{"meta": {"kind": "answer"}}] * 10 + [
        {"meta": {"kind": "unanswerable", "i": i}} for i in range(30)
    ]
    kept = D.balance(rows, seed=0)
    kinds = [r["meta"]["kind"] for r in kept]
    assert kinds.count("answer") == 10
    assert kinds.count("unanswerable") == round(D.UNANSWERABLE_PER_ANSWER * 10)
    assert kept == D.balance(rows, seed=0)  # seeded


def test_a_question_and_its_off_topic_copy_land_in_the_same_split() -> None:
    rows = []
    for i in range(200):
        for suffix in ("", ":off-topic"):
            rows.append(
                {
                    "prompt": [{"role": "user", "content": str(i)}],
                    "completion": [],
                    "meta": {"qid": f"q{i}{suffix}"},
                }
            )
    splits = S.split_rows(rows, 0.2)
    test_questions = [r["prompt"][0]["content"] for r in splits["test"]]
    assert 0 < len(test_questions) < len(rows)
    assert all(test_questions.count(q) == 2 for q in test_questions)  # both copies or neither
    assert all("meta" not in r for r in splits["train"] + splits["test"])


# ---- the shipped adapter ---------------------------------------------------------------------------------------
def test_the_shipped_adapter_fits_the_default_model() -> None:
    from model_store.base_model import default_gguf_path

    card = starter_card()
    assert card["base"]["gguf_sha256"] == sha256_file(default_gguf_path())
    config = json.loads((STARTER_DIR / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == card["config"]["lora"]["r"]
    assert (STARTER_DIR / "adapter_model.safetensors").stat().st_size < 10_000_000  # "a few MB"
    # The held-out articles of the loop experiment were never trained on.
    from evaluation.splits import HELDOUT_ARTICLES, SPLIT_SEED

    split = card["data"]["split"]
    assert (split["seed"], len(split["heldout_articles"])) == (SPLIT_SEED, HELDOUT_ARTICLES)
    assert not set(split["heldout_articles"]) & set(split["train_articles"])


def test_another_base_model_is_refused_with_a_reason() -> None:
    reason = unfit_reason({"base_model": "my/llama", "gguf_sha256": None}, starter_card())
    assert reason and "my/llama" in reason


# ---- publishing ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_starter(tmp_path: Path, tiny_llama_dir: Path) -> tuple[ModelRegistry, Path]:
    """A registry whose v0001 is the tiny Llama, and a random LoRA adapter for it with a card that names it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    registry = ModelRegistry(tmp_path / "models")
    registry.publish(
        lambda out: shutil.copytree(tiny_llama_dir, out, dirs_exist_ok=True),
        {"kind": "base", "base_model": "tiny", "gguf_sha256": "abc"},
    )
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    (adapter / "starter.json").write_text(json.dumps({"base": {"gguf_sha256": "abc"}, "licence": "test"}))
    return registry, adapter


def test_publish_merges_the_adapter_as_the_current_version_with_its_lineage(tiny_starter) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry, adapter = tiny_starter
    version, message = S.publish_starter(registry, adapter=adapter)
    assert version.name == "v0002" and registry.current_name() == "v0002", message
    m = version.manifest
    assert (m["kind"], m["parent"], m["lineage"]["base"]) == ("starter", "v0001", "v0001")
    assert m["lineage"]["adapter_sha256"] == sha256_file(adapter / "adapter_model.safetensors")
    assert m["merge"]["max_abs_logit_diff"] <= m["merge"]["atol"]
    # The published weights ARE base + adapter (not the base copied over).
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    merged = AutoModelForCausalLM.from_pretrained(version.path)(ids).logits
    base = AutoModelForCausalLM.from_pretrained(registry.get("v0001").path)
    with_adapter = PeftModel.from_pretrained(base, adapter)(ids).logits
    assert torch.allclose(merged, with_adapter, atol=1e-4)
    assert not torch.allclose(
        merged, AutoModelForCausalLM.from_pretrained(registry.get("v0001").path)(ids).logits
    )


def test_publish_is_once_and_never_undoes_a_rollback(tiny_starter) -> None:
    registry, adapter = tiny_starter
    S.publish_starter(registry, adapter=adapter)
    registry.rollback("v0001")
    version, message = S.publish_starter(registry, adapter=adapter)
    assert version.name == "v0002" and "already" in message
    assert registry.current_name() == "v0001"
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]
    assert starter_version(registry).name == "v0002"


def _newer_adapter(adapter: Path, tmp_path: Path) -> Path:
    """The same adapter with other weights: what an upgraded package ships."""
    from safetensors.torch import load_file, save_file

    newer = tmp_path / "newer-adapter"
    shutil.copytree(adapter, newer)
    weights = load_file(newer / "adapter_model.safetensors")
    save_file({k: v * 0.5 for k, v in weights.items()}, newer / "adapter_model.safetensors")
    return newer


def test_a_newer_shipped_starter_replaces_the_served_starter_only(tiny_starter, tmp_path: Path) -> None:
    """An upgrade publishes the newer starter while the previous one is served (it stays for rollback); after a
    rollback or a retrain on top of the starter, the user's choice stays."""
    registry, adapter = tiny_starter
    S.publish_starter(registry, adapter=adapter)
    newer = _newer_adapter(adapter, tmp_path)
    version, message = S.publish_starter(registry, adapter=newer)
    assert version.name == "v0003" and registry.current_name() == "v0003", message
    assert version.manifest["replaces"] == "v0002" and "v0002 stays for rollback" in message
    assert version.manifest["lineage"]["adapter_sha256"] == sha256_file(newer / "adapter_model.safetensors")
    assert S.publish_starter(registry, adapter=newer)[0].name == "v0003"  # once
    registry.rollback("v0002")  # the user goes back to the previous starter: that stays
    assert S.publish_starter(registry, adapter=newer)[0].name == "v0003"
    assert registry.current_name() == "v0002"


def test_a_newer_starter_leaves_a_rollback_to_the_raw_model_alone(tiny_starter, tmp_path: Path) -> None:
    registry, adapter = tiny_starter
    S.publish_starter(registry, adapter=adapter)
    registry.rollback("v0001")
    version, message = S.publish_starter(registry, adapter=_newer_adapter(adapter, tmp_path))
    assert version.name == "v0002" and "newer one is shipped" in message
    assert registry.current_name() == "v0001" and [v.name for v in registry.versions()] == ["v0001", "v0002"]


def test_a_base_the_adapter_was_not_trained_on_is_left_alone(tiny_starter) -> None:
    registry, adapter = tiny_starter
    (adapter / "starter.json").write_text(json.dumps({"base": {"gguf_sha256": "other"}}))
    version, message = S.publish_starter(registry, adapter=adapter)
    assert version is None and "not applied" in message
    assert [v.name for v in registry.versions()] == ["v0001"]


def test_a_missing_adapter_file_publishes_nothing(tiny_starter) -> None:
    registry, adapter = tiny_starter
    os.remove(adapter / "adapter_model.safetensors")
    with pytest.raises(FileNotFoundError):
        S.publish_starter(registry, adapter=adapter)
    assert [v.name for v in registry.versions()] == ["v0001"] and registry.current_name() == "v0001"


# ---- building the rows -----------------------------------------------------------------------------------------
def _article(title: str, context: str, qas: list[tuple[str, str | None]]) -> dict:
    return {
        "title": title,
        "paragraphs": [
            {
                "context": context,
                "qas": [
                    {
                        "id": f"{title}-{i}",
                        "question": q,
                        "is_impossible": a is None,
                        "answers": [] if a is None else [{"text": a, "answer_start": context.index(a)}],
                    }
                    for i, (q, a) in enumerate(qas)
                ],
            }
        ],
    }


def test_build_renders_the_training_articles_through_retrieval_and_never_the_held_out_ones(
    tmp_path: Path,
) -> None:
    squad = {
        "version": "v2.0",
        "data": [
            _article(
                "Rivers",
                "The Rhine flows from the Swiss Alps to the North Sea. It is 1,230 km long.",
                [("Where does the Rhine flow to?", "the North Sea"), ("Who owns the Rhine?", None)],
            ),
            _article(
                "Birds",
                "Swifts spend most of their lives flying and can sleep on the wing.",
                [("Where do swifts sleep?", "on the wing")],
            ),
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    from evaluation.splits import split_articles

    train_titles, heldout = split_articles(squad, 1, 0)
    summary = D.build(path, tmp_path / "rows.jsonl", k=2, heldout=1, seed=0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert summary["split"]["heldout_articles"] == heldout and len(rows) == summary["rows"]
    assert {r["meta"]["title"] for r in rows} <= set(train_titles)
    for row in rows:
        system, user = row["prompt"]
        assert system["role"] == "system" and user["content"].startswith("Passages:\n[1]")
        answer = row["completion"][0]["content"]
        if row["meta"]["kind"] == "answer":
            assert answer in ("the North Sea [1].", "on the wing [1].")
        else:
            assert answer == NO_ANSWER
    assert (tmp_path / "rows.summary.json").is_file()


def test_a_retrain_starts_from_the_starter_by_default_and_never_stacks(tmp_path: Path) -> None:
    from training.config import load_config
    from training.run_state import start_version

    registry = ModelRegistry(tmp_path / "models")

    def publish(kind: str) -> str:
        return registry.publish(lambda out: (out / "config.json").write_text("{}"), {"kind": kind}).name

    assert load_config().model.start_from == "starter"
    publish("base")
    assert start_version(registry, "starter").name == "v0001"  # no starter published: the base
    publish("starter")
    publish("retrain")  # a user's fine-tune is current now
    assert start_version(registry, "starter").name == "v0002"
    assert start_version(registry, "base").name == "v0001"
    assert start_version(registry, "current").name == "v0003"


def test_balance_takes_the_share_of_unanswerables_asked_for() -> None:
    rows = [{"meta": {"kind": "answer"}}] * 10 + [
        {"meta": {"kind": "unanswerable", "i": i}} for i in range(30)
    ]
    kinds = [r["meta"]["kind"] for r in D.balance(rows, seed=0, per_answer=1.0)]
    assert (kinds.count("answer"), kinds.count("unanswerable")) == (10, 10)


# ---- views -----------------------------------------------------------------------------------------------------
def test_the_first_view_is_the_retrieval_as_shown_and_others_reshow_a_prefix() -> None:
    import random

    shown = [passage(f"p{i}", i) for i in range(1, 5)]
    views = D.passage_views(shown, 4, random.Random(0))
    assert len(views) == 4 and views[0] == shown
    for view in views[1:]:
        ranks = sorted(p.rank for p in view)
        assert 2 <= len(view) <= 4 and ranks == list(range(1, len(view) + 1))  # the top n, reordered
    assert any([p.rank for p in v] != sorted(p.rank for p in v) or len(v) < 4 for v in views[1:])
    assert views == D.passage_views(shown, 4, random.Random(0))  # seeded


def test_an_extra_view_moves_the_citation_with_the_gold_passage() -> None:
    shown = [passage("Paris is big.", 1), passage("The Seine flows through Paris.", 2)]
    assert D.target_answer(["the Seine"], False, shown[::-1]) == ("the Seine [1].", "answer")
    assert D.target_answer(["the Seine"], False, shown[:1]) == (NO_ANSWER, "retrieval_miss")


def test_every_view_of_a_question_lands_in_its_split() -> None:
    qids = [f"q{i}{s}" for i in range(300) for s in ("", ":view1", ":off-topic")]
    held = {q.split(":")[0] for q in qids if S.is_test_qid(q, 0.1)}
    assert 0 < len(held) < 300
    assert all(S.is_test_qid(q, 0.1) == (q.split(":")[0] in held) for q in qids)


def test_build_refuses_no_views(tmp_path: Path) -> None:
    with pytest.raises(D.StarterDataError, match="views"):
        D.build(tmp_path / "none.json", tmp_path / "out.jsonl", k=4, heldout=4, seed=0, views=0)


def test_build_with_two_views_writes_both_showings_and_every_row_before_balancing(tmp_path: Path) -> None:
    squad = {
        "version": "v2.0",
        "data": [
            _article(f"Topic{t}", f"Fact {t}: the answer is word{t}.", [(f"What is fact {t}?", f"word{t}")])
            for t in range(4)
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    summary = D.build(path, tmp_path / "rows.jsonl", k=2, heldout=1, seed=0, views=2, progress=False)
    every = [json.loads(line) for line in (tmp_path / "rows.all.jsonl").read_text().splitlines()]
    views = {r["meta"]["qid"]: r["meta"]["view"] for r in every if r["meta"]["kind"] != "off_topic"}
    assert summary["views"] == 2 and sorted(set(views.values())) == [0, 1]
    assert all(f"{q}:view1" in views for q, v in views.items() if v == 0)
    assert all(r["meta"]["answers"] for r in every if r["meta"]["kind"] == "answer")


def test_the_card_names_the_weights_the_adapter_was_trained_on(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"w")
    assert S.base_identity(tmp_path) == {
        "gguf_sha256": None,
        "safetensors_sha256": sha256_file(tmp_path / "model.safetensors"),
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"gguf_sha256": "g"}))
    assert S.base_identity(tmp_path)["gguf_sha256"] == "g"


def test_the_recipes_32_rows_per_step_come_in_small_micro_batches_on_a_cpu() -> None:
    from training.config import load_config

    for cuda, micro in ((True, 32), (False, 2)):
        cfg = load_config(None, S.STARTER_SETTINGS + S.batch_settings(cuda))
        assert cfg.sft.batch_size == micro and cfg.sft.batch_size * cfg.sft.grad_accum == S.EFFECTIVE_BATCH
        assert cfg.sft.bf16_cpu_micro_batch is None  # ~1,000-token rows: not the larger bf16 micro-batch
    overridden = load_config(None, S.STARTER_SETTINGS + S.batch_settings(False) + ["sft.batch_size=4"])
    assert overridden.sft.batch_size == 4  # a user's --set still wins
