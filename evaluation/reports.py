"""Write what an evaluation found: report.json, report.md with the charts embedded, PNG charts, a rich table.

Charts use matplotlib's Agg backend (no display needed). Every report.md lists the metric definitions, so a
reader does not need the code to know what a number means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
EXAMPLES = "examples.jsonl"


# ---- formatting ---------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A compact table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(c) for c in row))
    Console().print(table)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


# ---- charts -------------------------------------------------------------------------------------------------
ANSWER_BARS = (
    ("EM", "em"),
    ("F1", "f1"),
    ("F1 answerable", "f1_answerable"),
    ("contains gold", "contains_gold_rate"),
    ("citation correct", "citation_correctness"),
    ("abstain P", "abstention_precision"),
    ("abstain R", "abstention_recall"),
)


def chart_answer_metrics(series: dict[str, dict[str, Any]], path: Path) -> str:
    """Grouped bars of the answer metrics, one group per metric and one bar per run (model version)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(series), 1)
    for i, (name, answers) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(ANSWER_BARS))]
        ax.bar(xs, [_num(answers.get(key)) for _, key in ANSWER_BARS], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(ANSWER_BARS))])
    ax.set_xticklabels([label for label, _ in ANSWER_BARS], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title("Answer quality")
    ax.legend()
    return _save(fig, path)


def chart_recall_curve(curve: Sequence[float | None], path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ks = list(range(1, len(curve) + 1))
    ax.plot(ks, [_num(v) for v in curve], marker="o")
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k of the gold context")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.set_title("Retrieval recall@k")
    return _save(fig, path)


def chart_latency(series: dict[str, dict[str, list[float]]], path: Path) -> str:
    """Histograms of time to first token and total latency (ms), one colour per run."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in zip(
        axes, ("first_token", "total"), ("time to first token (ms)", "total (ms)"), strict=True
    ):
        for name, times in series.items():
            values = times.get(key, [])
            if values:
                ax.hist(values, bins=min(30, max(5, len(values) // 3)), alpha=0.6, label=name)
        ax.set_title(title)
        ax.set_ylabel("questions")
    if axes[-1].get_legend_handles_labels()[0]:  # batched answers have no per-answer latency to plot
        axes[-1].legend()
    return _save(fig, path)


def chart_buckets(buckets: Sequence[dict[str, Any]], path: Path) -> str:
    """Reward-model pair accuracy per bucket of (chosen - rejected) length in words, with counts."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    labels = [b["bucket"] for b in buckets]
    bars = ax.bar(labels, [_num(b["accuracy"]) for b in buckets])
    for bar, b in zip(bars, buckets, strict=True):
        ax.annotate(f"n={b['n']}", (bar.get_x() + bar.get_width() / 2, 0.02), ha="center", fontsize=8)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("chosen minus rejected length (words)")
    ax.set_ylabel("pair accuracy")
    ax.set_title("Reward model accuracy by length difference")
    return _save(fig, path)


def chart_margins(margins: Sequence[float], path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(margins, bins=min(40, max(5, len(margins) // 5)))
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("score(chosen) - score(rejected)")
    ax.set_ylabel("pairs")
    ax.set_title("Reward margins")
    return _save(fig, path)


def chart_wins(wins: dict[str, int], names: tuple[str, str], path: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    labels = [f"{names[0]} better", "tie", f"{names[1]} better"]
    ax.bar(labels, [wins["a"], wins["tie"], wins["b"]], color=["tab:blue", "tab:grey", "tab:orange"])
    ax.set_ylabel("questions")
    ax.set_title(f"Head to head ({wins['judge']})")
    return _save(fig, path)


# ---- eval -----------------------------------------------------------------------------------------------------
def eval_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) for the compact table of one eval run."""
    r, a, lat = metrics["retrieval"], metrics["answers"], metrics["latency_ms"]
    return [
        ("questions (errors)", f"{metrics['counts']['questions']} ({metrics['counts']['errors']})"),
        ("recall@1 / @5 / @10", " / ".join(fmt(r[f"recall@{k}"]) for k in (1, 5, 10))),
        ("MRR", r["mrr"]),
        ("EM", a["em"]),
        ("F1", a["f1"]),
        ("F1 answerable", a["f1_answerable"]),
        ("contains gold", a["contains_gold_rate"]),
        ("citation rate / correctness", f"{fmt(a['citation_rate'])} / {fmt(a['citation_correctness'])}"),
        (
            "abstention P / R / rate",
            f"{fmt(a['abstention_precision'])} / {fmt(a['abstention_recall'])} / {fmt(a['abstention_rate'])}",
        ),
        ("mean answer words", fmt(a["mean_answer_words"], 1)),
        ("gated (no passage relevant enough)", fmt(a.get("relevance_gated_rate"))),
        ("first token p50 / p95 ms", f"{fmt(lat['first_token_p50'], 0)} / {fmt(lat['first_token_p95'], 0)}"),
        ("total p50 / p95 ms", f"{fmt(lat['total_p50'], 0)} / {fmt(lat['total_p95'], 0)}"),
    ]


def latency_series(results: Sequence[Any]) -> dict[str, list[float]]:
    return {
        key: [t for r in results if (t := r.latency(key)) is not None] for key in ("first_token", "total")
    }


def _definitions_md(definitions: dict[str, str]) -> str:
    return "\n".join(f"- **{k}**: {v}" for k, v in definitions.items())


def write_eval_report(report: dict[str, Any], results: Sequence[Any], out_dir: Path) -> Path:
    """report.json, examples.jsonl, charts and report.md for one `ragqa eval` run; prints the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    version = report["model"]["version"]
    m = report["metrics"]
    charts = {
        "answers": chart_answer_metrics({version: m["answers"]}, out_dir / "answers.png"),
        "recall": chart_recall_curve(m["retrieval"]["recall_curve"], out_dir / "recall_at_k.png"),
        "latency": chart_latency({version: latency_series(results)}, out_dir / "latency.png"),
    }
    report = {**report, "charts": charts, "examples_file": EXAMPLES}
    write_json(out_dir / REPORT_JSON, report)
    with open(out_dir / EXAMPLES, "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    rows = eval_rows(m)
    d = report["dataset"]
    md = [
        f"# Evaluation of {version} on {Path(d['path']).name}",
        "",
        f"{d['questions_evaluated']} of {d['questions_in_file']} questions ({d['format']} format, "
        f"{d['unanswerable_evaluated']} unanswerable, seed {d['seed']}), {d['documents']} documents; "
        f"k={report['settings']['k']}, max_new_tokens={report['settings']['max_new_tokens']}, "
        f"embedder {report['settings']['embedder']}; wall time {report['wall_s']} s.",
        "",
        md_table(["metric", "value"], rows),
        "",
        f"![answer metrics]({charts['answers']})",
        "",
        f"![recall@k]({charts['recall']})",
        "",
        f"![latency]({charts['latency']})",
        "",
        "## Sample answers",
        "",
        md_table(
            ["question", "gold", "answer", "F1"],
            [
                (
                    r.example.question,
                    " / ".join(r.example.answers) or "(unanswerable)",
                    r.answer[:200],
                    r.scores.get("f1"),
                )
                for r in list(results)[:10]
            ],
        ),
        "",
        "## Definitions",
        "",
        _definitions_md(report["definitions"]),
        "",
    ]
    (out_dir / REPORT_MD).write_text("\n".join(md), encoding="utf-8")
    print_table(f"ragqa eval: {version} on {Path(d['path']).name}", ["metric", "value"], rows)
    print(f"report: {out_dir / REPORT_MD}")
    return out_dir


# ---- eval-rm ----------------------------------------------------------------------------------------------------
def rm_rows(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("pairs", metrics["pairs"]),
        ("accuracy", metrics["accuracy"]),
        ("ties", metrics["ties"]),
        ("mean margin", metrics["mean_margin"]),
        ("human chose the longer answer", metrics["chosen_longer_rate"]),
        ("RM prefers the longer answer", metrics["rm_prefers_longer_rate"]),
    ]
    rows += [
        (f"accuracy, length diff {b['bucket']} (n={b['n']})", b["accuracy"])
        for b in metrics["by_length_diff"]
    ]
    for kind, label in (("won", "abstention won"), ("lost", "abstention lost"), ("neither", "no abstention")):
        if "by_abstention" in metrics:
            row = metrics["by_abstention"][kind]
            rows.append((f"accuracy, {label} (n={row['n']})", row["accuracy"]))
    return rows


def write_rm_report(report: dict[str, Any], margins: Sequence[float], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    m = report["metrics"]
    charts = {
        "by_length": chart_buckets(m["by_length_diff"], out_dir / "rm_accuracy_by_length.png"),
        "margins": chart_margins(margins, out_dir / "rm_margins.png"),
    }
    report = {**report, "charts": charts}
    write_json(out_dir / REPORT_JSON, report)
    rows = rm_rows(m)
    name = Path(report["pairs_file"]).name
    md = [
        f"# Reward model evaluation on {name}",
        "",
        f"Reward model `{report['reward_model']['path']}`; {m['pairs']} pairs ({report['format']} format, "
        f"seed {report['seed']}); wall time {report['wall_s']} s.",
        "",
        md_table(["metric", "value"], rows),
        "",
        f"![accuracy by length difference]({charts['by_length']})",
        "",
        f"![margins]({charts['margins']})",
        "",
        "## Definitions",
        "",
        _definitions_md(report["definitions"]),
        "",
    ]
    (out_dir / REPORT_MD).write_text("\n".join(md), encoding="utf-8")
    print_table(f"ragqa eval-rm: {name}", ["metric", "value"], rows)
    print(f"report: {out_dir / REPORT_MD}")
    return out_dir


# ---- compare ----------------------------------------------------------------------------------------------------
def ci_text(stat: dict[str, Any]) -> str:
    """ "[lo, hi]" of a bootstrap result (metrics.bootstrap_mean_ci / paired_bootstrap_ci)."""
    lo, hi = stat["ci"]
    return f"[{fmt(lo)}, {fmt(hi)}]"


def write_compare_report(report: dict[str, Any], results: dict[str, Sequence[Any]], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    a, b = report["versions"]
    ma, mb = report["metrics"][a], report["metrics"][b]
    charts = {
        "answers": chart_answer_metrics({a: ma["answers"], b: mb["answers"]}, out_dir / "answers.png"),
        "latency": chart_latency(
            {v: latency_series(rs) for v, rs in results.items()}, out_dir / "latency.png"
        ),
        "wins": chart_wins(report["win_rate"], (a, b), out_dir / "wins.png"),
    }
    report = {**report, "charts": charts}
    write_json(out_dir / REPORT_JSON, report)
    rows_a, rows_b = eval_rows(ma), eval_rows(mb)
    rows = [(label, va, vb) for (label, va), (_, vb) in zip(rows_a, rows_b, strict=True)]
    rows.append(("F1 95% CI", *(ci_text(report["f1_ci"][v]) for v in (a, b))))
    d = report["f1_difference"]
    rows.append((f"F1 {b} - {a} (95% paired CI, n={d['n']})", "", f"{fmt(d['diff'])} {ci_text(d)}"))
    w = report["win_rate"]
    rows.append((f"win rate of {b} over {a} ({w['judge']})", "", w["win_rate_b"]))
    md = [
        f"# {a} vs {b} on {Path(report['dataset']['path']).name}",
        "",
        f"{report['dataset']['questions_evaluated']} questions, the same retrieval for both; "
        f"judge: {w['judge']} ({w['b']} wins for {b}, {w['a']} for {a}, {w['tie']} ties).",
        "",
        md_table(["metric", a, b], rows),
        "",
        f"![answer metrics]({charts['answers']})",
        "",
        f"![head to head]({charts['wins']})",
        "",
        f"![latency]({charts['latency']})",
        "",
        "## Where the answers differ",
        "",
        md_table(
            ["question", "gold", a, b, f"F1 {a}", f"F1 {b}", "reward diff"],
            [
                (
                    d["question"],
                    " / ".join(d["answers"]) or "(unanswerable)",
                    d["answer_a"][:160],
                    d["answer_b"][:160],
                    d["f1_a"],
                    d["f1_b"],
                    d.get("reward_diff"),
                )
                for d in report["differences"]
            ],
        ),
        "",
        "## Definitions",
        "",
        _definitions_md(report["definitions"]),
        "",
    ]
    (out_dir / REPORT_MD).write_text("\n".join(md), encoding="utf-8")
    print_table(f"ragqa compare: {a} vs {b}", ["metric", a, b], rows)
    print(f"report: {out_dir / REPORT_MD}")
    return out_dir
