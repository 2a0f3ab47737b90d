"""Two data-parallel CPU processes (gloo) run the tiny PPO config to completion and stay in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training.ppo.toy import write_toy_prompts

REPO = Path(__file__).resolve().parents[3]


def test_two_processes_run_two_steps(toy_models: tuple[Path, Path], tmp_path: Path) -> None:
    prompts = write_toy_prompts(tmp_path / "prompts.jsonl", 16)
    out = tmp_path / "out"
    # `accelerate launch --cpu` uses its single-process launcher; --multi_gpu is the torchrun launcher,
    # and the trainer's Accelerator(cpu=True) picks gloo when there is no CUDA.
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
        "training.ppo",
        "--config",
        str(REPO / "training/configs/ppo_tiny.yaml"),
        "--set",
        f"policy_dir={toy_models[0]}",
        "--set",
        f"reward_dir={toy_models[1]}",
        "--set",
        f"prompts_file={prompts}",
        "--set",
        f"out_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["processes"] == 2
    assert summary["processes_in_sync"] is True
    assert summary["steps"] == 2
    assert (out / "adapters" / "policy" / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "step-000002" / "rng_rank1.pt").is_file()
