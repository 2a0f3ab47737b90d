"""`python -m training.ppo --config training/configs/ppo.yaml [--set key=value ...] [--resume]`.

Several processes: `accelerate launch --multi_gpu --num_processes 2 -m training.ppo --config ...` (torchrun
underneath; without CUDA the trainer selects gloo). On CPU, `accelerate launch --cpu` starts ONE process only.
The config file names policy_dir, reward_dir, prompts_file and out_dir (see training/configs/ppo.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from training.ppo.config import PPOConfigError, load_ppo_config


def run_from_config(config_path: str, overrides: list[str], resume: bool) -> int:
    from model_store.loading import ModelLoadError
    from training.ppo.rollout import PromptError, read_prompts_jsonl
    from training.ppo.trainer import run_ppo

    try:
        cfg = load_ppo_config(config_path, overrides)
        missing = [k for k in ("policy_dir", "reward_dir", "prompts_file", "out_dir") if not getattr(cfg, k)]
        if missing:
            raise PPOConfigError(f"the standalone run needs {missing} in the config or as --set key=value")
        prompts = read_prompts_jsonl(Path(cfg.prompts_file))
        result = run_ppo(
            cfg,
            policy_dir=Path(cfg.policy_dir),
            reward_dir=Path(cfg.reward_dir),
            prompts=prompts,
            out_dir=Path(cfg.out_dir),
            resume=resume,
        )
    except (PPOConfigError, PromptError, ModelLoadError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # one summary, not one per process
        print(json.dumps({"policy_adapter_dir": str(result.policy_adapter_dir), **result.summary}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ppo", description="PPO on LoRA adapters.")
    parser.add_argument("--config", required=True, help="YAML file with PPOConfig keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in out_dir"
    )
    args = parser.parse_args(argv)
    return run_from_config(args.config, args.overrides, args.resume)


if __name__ == "__main__":
    sys.exit(main())
