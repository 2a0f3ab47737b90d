"""SFT and the reward model with two data-parallel CPU processes under `accelerate launch`.

`accelerate launch --cpu --num_processes 2` starts ONE process (its single-process launcher; measured: the
epoch advances as for one process), so the torchrun launcher (`--multi_gpu`) is used; without CUDA the
Trainer's `use_cpu` picks gloo. With 4 examples, batch 2 per process and 2 processes, one optimizer step is
one epoch; a single process would need two.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.conftest import REPO, TINY_CONFIG, subprocess_env


def launch(module: str, export_dir: Path, model: Path, out: Path, home: Path) -> dict:
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_port=0",
        "-m",
        module,
        "--config",
        str(TINY_CONFIG),
        "--data",
        str(export_dir),
        "--model",
        str(model),
        "--out",
        str(out),
    ]
    env = {**subprocess_env(), "RAGQA_HOME": str(home)}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_sft_on_two_processes(
    tiny_model_dir: Path, export_dir: Path, tmp_path: Path, ragqa_home: Path
) -> None:
    sft = launch("training.sft", export_dir, tiny_model_dir, tmp_path / "sft", ragqa_home)
    summary = sft["summary"]
    assert summary["processes"] == 2 and summary["steps"] == 2
    epochs = [row["epoch"] for row in sft["log_history"] if "loss" in row]
    assert epochs[0] == pytest.approx(1.0)  # 4 examples / (2 per process x 2 processes)
    assert summary["merge"]["max_abs_logit_diff"] <= 1e-3
    assert (tmp_path / "sft" / "merged" / "config.json").is_file()


# Slow: a second two-process launch costs ~20 s on a 2-core AVX2-only CPU, and the default run must stay under
# 15 minutes there; the default run keeps SFT (above) and PPO (tests/training/ppo) on two processes.
@pytest.mark.slow
def test_reward_model_on_two_processes(
    tiny_model_dir: Path, export_dir: Path, tmp_path: Path, ragqa_home: Path
) -> None:
    rm = launch("training.reward", export_dir, tiny_model_dir, tmp_path / "rm", ragqa_home)
    assert rm["summary"]["processes"] == 2 and rm["summary"]["heldout_accuracy"] is not None
    assert (tmp_path / "rm" / "merged" / "config.json").is_file()
