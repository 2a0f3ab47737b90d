"""DPO (the alternative to reward model + PPO): a short run writes an adapter and held-out metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import write_export
from training.data import TrainingDataError, load_export
from training.dpo import train_dpo


def test_short_dpo_run(tiny_model_dir: Path, export_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    out = tmp_path / "dpo"
    result = train_dpo(
        tiny_cfg("algorithm=dpo"), model_dir=tiny_model_dir, data=load_export(export_dir), out_dir=out
    )
    m = result["metrics"]
    assert result["status"] == "done" and m["steps"] == 2 and m["pairs_test"] == 2
    assert 0.0 <= m["heldout_accuracy"] <= 1.0 and m["heldout_mean_margin"] is not None
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["r"] == 4
    losses = [
        row["loss"] for row in json.loads((out / "metrics.json").read_text())["log_history"] if "loss" in row
    ]
    assert losses and abs(losses[0] - 0.6931) < 0.01  # DPO starts at log(2): policy == reference


def test_dpo_refuses_too_few_pairs(tiny_model_dir: Path, tmp_path: Path, tiny_cfg) -> None:
    data = load_export(write_export(tmp_path / "e", pairs=1))
    with pytest.raises(TrainingDataError, match=r"too little data: 1 preference pairs"):
        train_dpo(tiny_cfg(), model_dir=tiny_model_dir, data=data, out_dir=tmp_path / "dpo")
