"""KTO on thumbs (`algorithm: kto`): rated answers in TRL's unpaired format train a LoRA that makes the
thumbs-up answers more likely relative to the thumbs-down ones; too few ratings are refused; the retrain
wires it like DPO (merge, gate, publish).

The rated answers are written here in the export's `unpaired.{train,test}.jsonl` format:
`{"prompt": [chat messages], "completion": [{"role": "assistant", ...}], "label": true|false, "meta": {...}}`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from model_store.registry import ModelRegistry
from tests.training.conftest import FACTS, TINY_CONFIG, prompt_for, write_export
from training.data import TrainingDataError, load_export
from training.kto import train_kto
from training.pipeline import RetrainError, RetrainOptions, run_retrain

BAD = "I do not know."


def good_answer(i: int) -> str:
    return f"{FACTS[i % len(FACTS)][2]} [1]"


def rated(i: int, up: bool) -> dict[str, Any]:
    """One exported rating: the answer shown for prompt i, 👍 (the right fact) or 👎 (a non-answer)."""
    return {
        "prompt": prompt_for(i),
        "completion": [{"role": "assistant", "content": good_answer(i) if up else BAD}],
        "label": up,
        "meta": {"source": "thumbs", "reason": None if up else "does not answer", "model_version": "v0001"},
    }


def write_unpaired(folder: Path, *, questions: int = 4, test_questions: int = 1) -> Path:
    """An export with, per question, one 👍 and one 👎 answer (train) and the same for held-out questions."""
    write_export(folder)
    train = [rated(i, up) for i in range(questions) for up in (True, False)]
    test = [rated(100 + i, up) for i in range(test_questions) for up in (True, False)]
    for split, rows in (("train", train), ("test", test)):
        (folder / f"unpaired.{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def completion_logprob(model: Any, tokenizer: Any, prompt: list[dict[str, str]], answer: str) -> float:
    """log p(answer tokens | prompt) under the chat template: what KTO's implied reward is built from."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full_ids = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": answer}], tokenize=True, return_dict=False
    )
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    picked = logprobs.gather(1, targets[:, None])[:, 0]
    return float(picked[len(prompt_ids) - 1 :].sum())


def good_minus_bad(model: Any, tokenizer: Any, questions: range) -> float:
    """Mean log-prob of the 👍 answers minus that of the 👎 answers over the given questions."""
    good = [completion_logprob(model, tokenizer, prompt_for(i), good_answer(i)) for i in questions]
    bad = [completion_logprob(model, tokenizer, prompt_for(i), BAD) for i in questions]
    return (sum(good) - sum(bad)) / len(questions)


def test_kto_makes_thumbs_up_answers_likelier(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = load_export(write_unpaired(tmp_path / "export"))
    assert data.counts()["ratings_train"] == 8 and data.counts()["ratings_test"] == 2
    out = tmp_path / "kto"
    cfg = tiny_cfg("algorithm=kto", "kto.max_steps=8", "kto.batch_size=4", "kto.lr=5e-3")
    result = train_kto(cfg, model_dir=tiny_model_dir, data=data, out_dir=out)
    m = result["metrics"]
    assert result["status"] == "done" and m["steps"] == 8
    assert (m["ratings_good"], m["ratings_bad"], m["ratings_test"]) == (4, 4, 2)
    assert m["heldout_mean_margin"] is not None and math.isfinite(m["heldout_mean_margin"])
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    losses = [row["loss"] for row in history if "loss" in row]
    assert abs(losses[0] - 0.5) < 0.01  # KTO starts at 1 - sigmoid(0): policy == reference, KL 0
    assert losses[-1] < losses[0] - 0.05, losses

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    before_train, before_test = (
        good_minus_bad(base, tokenizer, range(4)),
        good_minus_bad(base, tokenizer, range(100, 101)),
    )
    tuned = PeftModel.from_pretrained(base, out / "adapter").eval()
    after_train, after_test = (
        good_minus_bad(tuned, tokenizer, range(4)),
        good_minus_bad(tuned, tokenizer, range(100, 101)),
    )
    print(
        f"KTO log-prob margin good-bad: train {before_train:.2f} -> {after_train:.2f}; "
        f"held-out {before_test:.2f} -> {after_test:.2f}; loss {losses[0]:.4f} -> {losses[-1]:.4f}"
    )
    assert after_train > before_train + 1.0  # the rated-up answers gained on the rated-down ones
    assert after_test > before_test  # and on held-out questions too


def test_kto_refuses_too_few_ratings(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    folder = write_unpaired(tmp_path / "e", questions=0)
    (folder / "unpaired.train.jsonl").write_text(json.dumps(rated(0, False)) + "\n")
    with pytest.raises(TrainingDataError, match=r"too little data: 1 rated answers .*need at least 2"):
        train_kto(
            tiny_cfg("algorithm=kto"),
            model_dir=tiny_model_dir,
            data=load_export(folder),
            out_dir=tmp_path / "k",
        )


def test_malformed_rating_is_named(tmp_path: Path) -> None:
    folder = write_unpaired(tmp_path / "e")
    (folder / "unpaired.train.jsonl").write_text(json.dumps({**rated(0, True), "label": "yes"}) + "\n")
    with pytest.raises(TrainingDataError, match=r'unpaired.train.jsonl:1: "label" must be true'):
        load_export(folder)


def test_retrain_refuses_kto_without_ratings_before_training(tiny_registry: Path, export_dir: Path) -> None:
    options = RetrainOptions(config=TINY_CONFIG, overrides=[f"data.export_dir={export_dir}", "algorithm=kto"])
    with pytest.raises(TrainingDataError, match=r"too little data: 0 rated answers .*\(KTO needs them\)"):
        run_retrain(options, say=lambda _: None)
    with pytest.raises(RetrainError, match="choose one policy stage of ppo, dpo, kto, not dpo and kto"):
        run_retrain(RetrainOptions(config=TINY_CONFIG, stages=["sft", "dpo", "kto"]), say=lambda _: None)
    assert ModelRegistry(tiny_registry).current_name() == "v0001"


@pytest.mark.slow
def test_kto_retrain_publishes(tiny_registry: Path, tmp_path: Path) -> None:
    export = write_unpaired(tmp_path / "export")
    options = RetrainOptions(config=TINY_CONFIG, overrides=[f"data.export_dir={export}", "algorithm=kto"])
    state = run_retrain(options, say=lambda _: None)
    assert state["plan"] == ["export", "sft", "rm", "kto", "merge", "evaluate", "publish"]
    assert state["stages"]["kto"]["metrics"]["ratings_train"] == 8
    manifest = ModelRegistry(tiny_registry).current().manifest
    assert manifest["algorithm"] == "kto" and manifest["metrics"]["kto"]["steps"] == 2
    assert manifest["data"]["ratings_train"] == 8


def test_kto_is_trl_stable_api_and_the_product_never_imports_trl_experimental() -> None:
    """KTOTrainer is TRL's stable trainer (not trl.experimental), and no product module imports
    trl.experimental itself (TRL's own deprecation shim in trl.models.utils does; that is TRL's business)."""
    import ast

    from trl import KTOTrainer

    assert KTOTrainer.__module__ == "trl.trainer.kto_trainer"
    repo = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("app", "training", "feedback_store", "retrieval"):
        for path in (repo / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                offenders += [
                    f"{path.relative_to(repo)}: {n}" for n in names if n.startswith("trl.experimental")
                ]
    assert offenders == []
