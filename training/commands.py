"""`ragqa retrain`: the whole training pipeline from the command line.

`add_commands(subparsers)` registers `retrain` (the lead wires it into app/cli.py); `scripts/retrain.py` runs
the same parser. Expected failures (bad config, too little data, a failed merge check, a busy run) raise
TrainingError/ConfigError subclasses that the ragqa error boundary prints as one `error:` line (exit 1), never a
traceback; the run folder keeps what finished.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.config import STAGES


def _stages(text: str) -> list[str]:
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"--stages takes a comma list of {', '.join(STAGES)}; got {text!r}")
    return stages


def cmd_retrain(args: argparse.Namespace) -> int:
    """Run or resume a retrain; print the plan, progress per stage and a short report."""
    from training.pipeline import RetrainOptions, run_retrain

    options = RetrainOptions(
        config=args.config,
        overrides=list(args.overrides or []),
        resume=args.resume,
        stages=args.stages,
        publish=not args.no_publish,
        force=args.force,
        start_from=args.start_from,
        dry_run=args.dry_run,
    )
    with _cpu_share("retrain", quiet=args.dry_run):
        state = run_retrain(options)
    if args.json:
        print(json.dumps(state, indent=1, default=str))
    if state.get("dry_run"):
        return 0
    print_report(state)
    return 0


def _cpu_share(kind: str, *, quiet: bool = False):
    """Run as a background job of RAGQA_HOME: lower priority, and fewer threads while `ragqa serve` runs there
    (model_store/cpu_share.py; RAGQA_HOME/config.yaml `server_cores`, `background_nice`)."""
    import contextlib

    if quiet:
        return contextlib.nullcontext()
    from app.config import AppConfig
    from model_store.cpu_share import background_job

    cfg = AppConfig.load()
    return background_job(cfg.paths.home, kind, cfg.cpu_share_policy())


def print_report(state: dict) -> None:
    """The short end-of-run report: data, metrics per stage, candidate vs current, published or not and why."""
    from training.report import stage_summary

    print(f"\nrun {state['run_id']}: {state['status']}")
    export = state["stages"].get("export", {}).get("metrics", {})
    if export:
        print(
            f"  data: snapshot {str(export.get('snapshot_id'))[:12]}, {export.get('demonstrations_train')} demonstrations, "
            f"{export.get('pairs_train')} pairs, {export.get('prompts_train')} prompts (train); "
            f"{export.get('prompts_test')} held-out prompts"
        )
    for name in state["plan"]:
        print("  " + stage_summary(name, state["stages"].get(name, {})))
    evaluated = state["stages"].get("evaluate", {}).get("metrics", {})
    if evaluated.get("candidate"):
        cand, cur = evaluated["candidate"], evaluated["current"]
        parts = [
            f"{k} {cur.get(k):.4g} -> {cand.get(k):.4g}"
            for k in ("mean_reward", "mean_length", "f1")
            if cand.get(k) is not None
        ]
        print(f"  candidate vs current ({evaluated.get('current_version')}): " + ", ".join(parts))
    publish = state["stages"].get("publish", {})
    gate = (publish.get("metrics") or {}).get("gate") or {}
    for reason in gate.get("reasons", []):
        print(f"    gate {reason}")
    print(f"  {publish.get('reason') or 'not published'}")
    print(f"  report: {state.get('report')}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `retrain` on a subparsers object (the `ragqa` CLI or scripts/retrain.py)."""
    p = subparsers.add_parser(
        "retrain",
        help="train a new model version from the feedback (SFT, reward model, PPO/DPO/KTO, merge, gate, publish)",
        description="Export the feedback, run SFT, the reward model and PPO (or DPO, or KTO on thumbs), merge, evaluate the "
        "candidate against the current model and publish it when the gate passes.",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="YAML config (default training/configs/default.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. sft.lr=1e-4",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue an interrupted run (finished stages are skipped)",
    )
    p.add_argument("--no-publish", action="store_true", help="evaluate but never publish")
    p.add_argument(
        "--force", action="store_true", help="publish even if the evaluation gate fails (recorded)"
    )
    p.add_argument(
        "--stages", type=_stages, default=None, help="training stages, e.g. sft,rm,ppo (default: all)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and the data counts, train nothing")
    p.add_argument(
        "--from",
        dest="start_from",
        choices=["starter", "base", "current"],
        default=None,
        help="start model: starter (default: the grounded-QA starter `ragqa setup` published, else the base), "
        "base (the raw first version) or current",
    )
    p.add_argument("--json", action="store_true", help="also print the run state as JSON")
    p.set_defaults(func=cmd_retrain, handler=cmd_retrain)
