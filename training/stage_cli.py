"""`python -m training.sft|reward|dpo`: one training stage outside a retrain run.

This module imports no stage: each stage module passes its own train function in (so there is no import loop
between the stages and the pipeline).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from settings.paths import Paths
from training.config import ConfigError, TrainConfig, load_config
from training.data import ExportData, load_export
from training.run_state import new_run_id, start_model

StageFn = Callable[..., Any]


def run_stage_cli(stage: str, train: StageFn, argv: list[str] | None = None) -> int:
    """`python -m training.<stage> --config FILE [--set k=v] [--data EXPORT] [--model DIR] [--out DIR] [--resume]`.

    Runs one training stage (`train`, the stage's own function) outside a retrain run: data from --data (or
    data.export_dir), the model from --model (or the registry's start model), outputs into --out (or
    RAGQA_HOME/runs/<new id>/<stage>). Errors go through the ragqa error boundary.
    """
    parser = argparse.ArgumentParser(prog=f"python -m training.{ {'rm': 'reward'}.get(stage, stage) }")
    parser.add_argument(
        "--config", type=Path, default=None, help="retrain YAML (default training/configs/default.yaml)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--data", type=Path, default=None, help="feedback export folder (default: data.export_dir)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model folder to train from (default: registry)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args(argv)
    from settings.errors import run_guarded  # the one error boundary, as in `ragqa`

    return run_guarded(lambda: _run_stage(stage, train, args))


def config_and_data(args: argparse.Namespace) -> tuple[TrainConfig, ExportData]:
    """--config/--set and --data (or data.export_dir) of a standalone training command, loaded."""
    cfg = load_config(args.config, args.overrides)
    export = args.data or (Path(cfg.data.export_dir) if cfg.data.export_dir else None)
    if export is None:
        raise ConfigError("give --data EXPORT_DIR (a `ragqa feedback export` folder) or set data.export_dir")
    return cfg, load_export(export)


def _run_stage(stage: str, train: StageFn, args: argparse.Namespace) -> int:
    cfg, data = config_and_data(args)
    paths = Paths.from_env()
    model = args.model or Path(start_model(cfg, paths, cfg.model.start_from)["path"])
    out = args.out or paths.runs_dir / new_run_id() / stage
    from training.time_budget import SHARE_KEYS

    # Alone, the stage gets its share of the retrain's budget (training/time_budget.py); null = no limit.
    minutes = cfg.time_budget.minutes
    budget = 60 * minutes * getattr(cfg.time_budget, SHARE_KEYS[stage]) if minutes else None
    result = train(cfg, model_dir=model, data=data, out_dir=out, resume=args.resume, budget_s=budget)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            json.dumps(
                {k: result[k] for k in ("status", "reason", "outputs", "metrics")}, indent=1, default=str
            )
        )
    return 0
