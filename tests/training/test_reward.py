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
