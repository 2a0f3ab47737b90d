"""Reward model: trains, merges into a plain seq-cls folder, reports held-out accuracy; long pairs; refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.conftest import write_export
from training.data import TrainingDataError, load_export
from training.reward import train_reward_model


def test_reward_model_heldout_accuracy(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = load_export(write_export(tmp_path / "e", pairs=4, pairs_test=3))
    out = tmp_path / "rm"
    result = train_reward_model(tiny_cfg(), model_dir=tiny_model_dir, data=data, out_dir=out)
    m = result["metrics"]
    assert m["pairs_used"] == 4 and m["pairs_dropped_too_long"] == 0 and m["steps"] == 2
    assert m["merge"]["max_abs_logit_diff"] <= 1e-3

    # Recompute the held-out numbers by hand with plain transformers on the merged folder.
    tok = AutoTokenizer.from_pretrained(out / "merged")
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token != tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    assert model.config.pad_token_id == tok.pad_token_id

    def score(prompt, answer) -> float:
        text = tok.apply_chat_template(prompt + answer, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            return float(model(**ids).logits[0, 0])

    margins = [
        score(p["prompt"], p["chosen"]) - score(p["prompt"], p["rejected"]) for p in data.pairs["test"]
    ]
    assert m["heldout_pairs"] == 3
    assert m["heldout_accuracy"] == pytest.approx(sum(x > 0 for x in margins) / 3)
    assert m["heldout_mean_margin"] == pytest.approx(sum(margins) / 3, abs=1e-4)
    assert (out / "plots" / "rm_curves.png").is_file()


def test_pairs_longer_than_max_length_fail_clearly(
    tiny_model_dir: Path, export_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    cfg = tiny_cfg("reward.max_length=64")  # every rendered pair is ~170 tokens
    with pytest.raises(
        TrainingDataError, match=r"longer than reward.max_length=64 tokens and RewardTrainer drops them"
    ):
        train_reward_model(
            cfg, model_dir=tiny_model_dir, data=load_export(export_dir), out_dir=tmp_path / "rm"
        )


def test_too_few_pairs_are_refused(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    data = load_export(write_export(tmp_path / "e", pairs=1))
    with pytest.raises(TrainingDataError, match=r"1 preference pairs in the train split \(need at least 2\)"):
        train_reward_model(tiny_cfg(), model_dir=tiny_model_dir, data=data, out_dir=tmp_path / "rm")


def _pair(answer: str, other: str, tag: int) -> dict:
    return {
        "prompt": [{"role": "user", "content": f"question {tag}"}],
        "chosen": [{"role": "assistant", "content": answer}],
        "rejected": [{"role": "assistant", "content": other}],
    }


NO = "The documents do not contain the answer."


def test_abstention_pairs_are_balanced_by_repeating_the_rarer_kind() -> None:
    """A loop's pairs: the abstention lost 7 (answerable questions), won 3 (unanswerable), 5 without one. The
    3 are repeated until both kinds number 7; nothing else changes, and the result is reproducible."""
    from training.reward import abstention_counts, abstention_outcome_of, balance_abstention

    lost = [_pair("Paris [1].", NO, i) for i in range(7)]
    won = [_pair(NO, "Lyon [1].", 10 + i) for i in range(3)]
    other = [_pair("Paris [1].", "Lyon [2].", 20 + i) for i in range(5)]
    pairs = lost + won + other
    assert abstention_counts(pairs) == {"won": 3, "lost": 7, "other": 5}
    out = balance_abstention(pairs, seed=0)
    assert abstention_counts(out) == {"won": 7, "lost": 7, "other": 5}
    assert len(out) == 19
    assert all(p in pairs for p in out)  # repeats only, no new pairs
    prompts = [p["prompt"][0]["content"] for p in out if abstention_outcome_of(p) == "won"]
    assert sorted(set(prompts)) == [f"question {10 + i}" for i in range(3)]
    assert max(prompts.count(q) for q in prompts) - min(prompts.count(q) for q in prompts) <= 1  # evenly
    assert out == balance_abstention(pairs, seed=0)
    # a variant of the sentence counts as an abstention (the metric's patterns), the other side does not
    assert abstention_outcome_of(_pair("The passages do not contain the answer.", "x", 0)) == "won"


def test_nothing_to_balance_leaves_the_pairs_alone() -> None:
    from training.reward import balance_abstention

    only_lost = [_pair("Paris [1].", NO, i) for i in range(4)]
    assert balance_abstention(only_lost, seed=0) == only_lost
    even = [_pair("Paris [1].", NO, 0), _pair(NO, "Lyon [1].", 1)]
    assert balance_abstention(even, seed=0) == even


def test_the_reward_stage_trains_on_balanced_pairs_and_reports_it(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    """The stage records the abstention counts it saw and trains on the balanced set (more pairs used); with
    `data.balance_abstention: false` on the pairs as they are. Held-out accuracy is split by kind."""
    import json

    folder = write_export(tmp_path / "e", pairs=4, pairs_test=2)
    path = folder / "preferences.train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["chosen"], rows[0]["rejected"] = [{"role": "assistant", "content": NO}], rows[0]["chosen"]
    rows[1]["rejected"] = [{"role": "assistant", "content": NO}]
    rows[2]["rejected"] = [{"role": "assistant", "content": NO}]
    rows[3]["rejected"] = [{"role": "assistant", "content": "Lyon [2]."}]  # "I do not know." abstains too
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_path = folder / "preferences.test.jsonl"
    test_rows = [json.loads(line) for line in test_path.read_text().splitlines()]
    test_rows[0]["rejected"] = [{"role": "assistant", "content": NO}]
    test_rows[1]["rejected"] = [{"role": "assistant", "content": "Lyon [2]."}]
    test_path.write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    data = load_export(folder)

    m = train_reward_model(tiny_cfg(), model_dir=tiny_model_dir, data=data, out_dir=tmp_path / "rm")[
        "metrics"
    ]
    assert m["abstention_pairs"] == {"won": 1, "lost": 2, "other": 1, "balanced": True}
    assert m["pairs_train"] == m["pairs_used"] == 5  # the one "won" pair repeated once
    assert m["heldout_pairs_abstention_lost"] == 1 and m["heldout_pairs_abstention_won"] == 0
    assert m["heldout_accuracy_abstention_lost"] in (0.0, 1.0)
    assert m["heldout_accuracy_abstention_won"] is None

    off = tiny_cfg("data.balance_abstention=false")
    m = train_reward_model(off, model_dir=tiny_model_dir, data=data, out_dir=tmp_path / "rm2")["metrics"]
    assert m["abstention_pairs"]["balanced"] is False and m["pairs_used"] == 4
