"""The end-of-run report: report.md (data, each stage's status and metrics, the gate, the publish outcome, plots)
and the one-line stage summaries `ragqa retrain` prints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


KEY_METRICS = {
    "export": [
        "snapshot_id",
        "demonstrations_train",
        "pairs_train",
        "ratings_train",
        "prompts_train",
        "prompts_test",
    ],
    "sft": ["demonstrations_train", "steps", "train_loss", "eval_loss"],
    "rm": [
        "pairs_used",
        "pairs_dropped_too_long",
        "steps",
        "train_loss",
        "heldout_accuracy",
        "heldout_mean_margin",
    ],
    "ppo": ["steps", "score_first", "score_last", "kl_last", "response_length_last", "selected_step"],
    "dpo": ["pairs_train", "steps", "train_loss", "heldout_accuracy", "heldout_mean_margin"],
    "kto": ["ratings_good", "ratings_bad", "steps", "train_loss", "heldout_mean_margin"],
    "merge": ["max_abs_logit_diff", "atol"],
    "evaluate": ["current_version", "prompts", "win_rate", "reward_delta", "kl", "kl_per_token"],
}


def budget_note(metrics: dict[str, Any]) -> str:
    """'time budget: 40 of 120 steps' when training/time_budget.py cut the stage, else ''."""
    budget = metrics.get("time_budget") or {}
    if not budget.get("cut"):
        return ""
    run = budget.get("steps", budget.get("hard_stop_at_step", metrics.get("steps")))
    return f"time budget ({budget['budget_s']:.0f} s): {run} of {budget.get('planned_steps')} steps"


def stage_summary(name: str, result: dict[str, Any]) -> str:
    status = result.get("status", "not run")
    if status != "done":
        return f"{name}: {status}" + (f" ({result.get('reason')})" if result.get("reason") else "")
    metrics = result.get("metrics", {})
    if name == "publish":
        return f"publish: {result['outputs'].get('version')} ({result.get('reason')})"
    shown = [f"{k}={_fmt(metrics[k])[:16]}" for k in KEY_METRICS.get(name, []) if metrics.get(k) is not None]
    note = budget_note(metrics)
    return f"{name}: done  " + " ".join(shown) + (f"  [{note}]" if note else "")


def write_report(ctx: Any) -> Path:
    """report.md: data, each stage's status and metrics, the gate's criteria, the publish outcome, plots."""
    state = ctx.state.data
    lines = [
        f"# Retrain run {ctx.run_dir.name}",
        "",
        f"- started: {state['created_at']}, from {state['start_model']['name']} ({state['start_model'].get('base_model')})",
        f"- algorithm: {ctx.cfg.algorithm}; stages: {', '.join(state['plan'])}",
        f"- config sha256: `{state['config_sha256']}`",
    ]
    if ctx.data:
        lines.append(f"- feedback snapshot: `{ctx.data.snapshot_id}`")
        lines.append("- data: " + ", ".join(f"{k} {v}" for k, v in ctx.data.counts().items()))
    lines += ["", "## Stages", "", "| stage | status | key metrics |", "|---|---|---|"]
    for name in state["plan"]:
        result = ctx.state.stage(name)
        metrics = result.get("metrics", {})
        shown = ", ".join(
            f"{k} {_fmt(metrics[k])}" for k in KEY_METRICS.get(name, []) if metrics.get(k) is not None
        )
        status = result.get("status", "not run")
        for extra in (budget_note(metrics), result.get("reason")):
            if extra:
                shown = (shown + "; " if shown else "") + str(extra)
        lines.append(f"| {name} | {status} | {shown.replace('|', '/')} |")
    evaluated = ctx.state.stage("evaluate").get("metrics") or {}
    if evaluated.get("candidate"):
        lines += ["", "## Candidate vs current", "", "| | current | candidate |", "|---|---|---|"]
        for key in ("mean_reward", "mean_length", "em", "f1"):
            if evaluated["candidate"].get(key) is not None:
                lines.append(
                    f"| {key} | {_fmt(evaluated['current'].get(key))} | {_fmt(evaluated['candidate'].get(key))} |"
                )
    decision = (ctx.state.stage("publish").get("metrics") or {}).get("gate")
    if decision:
        lines += ["", "## Gate", ""] + [f"- {r}" for r in decision["reasons"]]
    publish = ctx.state.stage("publish")
    if publish:
        lines += ["", "## Publish", "", f"- {publish.get('status')}: {publish.get('reason')}"]
        if publish.get("outputs", {}).get("version"):
            lines.append(f"- version: {publish['outputs']['version']}")
    plots = [p for name in state["plan"] for p in ctx.state.stage(name).get("plots", [])]
    if plots:
        lines += ["", "## Plots", ""]
        for p in plots:
            rel = os.path.relpath(p, ctx.run_dir)
            lines.append(f"![{rel}]({rel})")
    path = ctx.run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
