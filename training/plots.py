"""PNG charts for a retrain run: training curves from a Trainer's log history, and the gate comparison.

matplotlib with the Agg backend (no display); imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_points(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` in a Trainer log history (rows without the key are skipped)."""
    steps, values = [], []
    for row in log_history:
        if key in row and "step" in row and isinstance(row[key], int | float):
            steps.append(float(row["step"]))
            values.append(float(row[key]))
    return steps, values


def plot_curves(
    log_history: Sequence[dict[str, Any]], keys: Sequence[str], path: Path, title: str
) -> Path | None:
    """One panel per key found in the history; returns the PNG path, or None when no key has points."""
    found = [(k, *curve_points(log_history, k)) for k in keys]
    found = [f for f in found if f[1]]
    if not found:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(found), figsize=(4.6 * len(found), 3.2), squeeze=False)
    for ax, (key, steps, values) in zip(axes[0], found, strict=True):
        ax.plot(steps, values, marker="o", markersize=2)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_gate(candidate: dict[str, Any], current: dict[str, Any], path: Path) -> Path | None:
    """Bars of the gate's per-model numbers (mean reward, response length, EM/F1 when present)."""
    keys = [k for k in ("mean_reward", "mean_length", "em", "f1") if candidate.get(k) is not None]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [float(current.get(key) or 0.0), float(candidate.get(key) or 0.0)]
        ax.bar(["current", "candidate"], values, color=["#999999", "#3b7dd8"])
        ax.set_title(key)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
