"""Would an ensemble of reward models be steadier than one? Members and their mean, on the same preference pairs.

Several reward models trained on the same pairs with different seeds (the RM stage of `ragqa retrain` with
`seed=N`) disagree on the abstention pairs (won or lost by "The documents do not contain the answer."). This scores
every pair with every member, standardises each member's scores (z over all the answers it scored: the members'
scales differ), and takes the mean as the ensemble's score. For the members, the ensemble and each leave-one-out
pair of members it reports the `ragqa eval-rm` metrics (accuracy, by abstention outcome, length bias).

    python benchmarks/rm_ensemble.py --rm RM_SEED0 --rm RM_SEED1 --rm RM_SEED2 \\
        --pairs held_out=RUN/export/preferences.test.jsonl --pairs train=RUN/export/preferences.train.jsonl:240 \\
        --out docs/results/loop/from_starter_balanced/rm_ensemble.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu, load_average  # noqa: E402


def standardise(chosen: list[float], rejected: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """One member's scores as z-scores over every answer it scored (chosen and rejected together)."""
    both = np.asarray(chosen + rejected, dtype=np.float64)
    sd = both.std() or 1.0
    z = (both - both.mean()) / sd
    return z[: len(chosen)], z[len(chosen) :]


def ensemble(scores: list[tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """The mean of the members' standardised scores, per answer."""
    zs = [standardise(c, r) for c, r in scores]
    return list(np.mean([c for c, _ in zs], axis=0)), list(np.mean([r for _, r in zs], axis=0))


def summary(pairs: list[Any], chosen: list[float], rejected: list[float]) -> dict[str, Any]:
    from evaluation.runner import rm_pair_metrics

    m = rm_pair_metrics(pairs, chosen, rejected)
    keep = ("pairs", "accuracy", "by_abstention", "rm_prefers_longer_rate", "chosen_longer_rate")
    return {k: m[k] for k in keep if k in m}


def load(spec: str) -> tuple[str, list[Any]]:
    """NAME=FILE[:LIMIT] -> (name, pairs); a limit takes a seeded sample (seed 0), as `ragqa eval-rm` does."""
    from evaluation.formats import load_pairs
    from evaluation.runner import select_examples

    name, _, rest = spec.partition("=")
    path, _, limit = rest.partition(":")
    _fmt, pairs = load_pairs(Path(path))
    return name, select_examples(pairs, int(limit) if limit else None, 0)


def main(argv: list[str] | None = None) -> int:
    from evaluation.runner import nan_to_none
    from model_store.reward import RewardScorer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rm", action="append", required=True, type=Path, help="a member (repeat)")
    p.add_argument("--pairs", action="append", required=True, help="NAME=FILE[:LIMIT] (repeat)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if len(args.rm) < 2:
        raise SystemExit("an ensemble needs at least two --rm")
    t0, load_start = time.perf_counter(), load_average()
    sets = dict(load(spec) for spec in args.pairs)
    scores: dict[str, list[tuple[list[float], list[float]]]] = {name: [] for name in sets}
    for path in args.rm:
        scorer = RewardScorer(path)
        for name, pairs in sets.items():
            prompts = [list(x.prompt) for x in pairs]
            scores[name].append(
                (
                    scorer.score(prompts, [x.chosen for x in pairs]),
                    scorer.score(prompts, [x.rejected for x in pairs]),
                )
            )
        del scorer
        print(f"scored with {path}", flush=True)
    results: dict[str, Any] = {}
    for name, pairs in sets.items():
        members = {f"member{i}": summary(pairs, c, r) for i, (c, r) in enumerate(scores[name])}
        full = summary(pairs, *ensemble(scores[name]))
        pairs_of_two = {
            f"mean of members {i},{j}": summary(pairs, *ensemble([scores[name][i], scores[name][j]]))
            for i, j in itertools.combinations(range(len(args.rm)), 2)
        }
        results[name] = {"members": members, "ensemble": full, "ensembles_of_two": pairs_of_two}
    report = {
        "members": [str(x) for x in args.rm],
        "sets": {name: len(pairs) for name, pairs in sets.items()},
        "results": nan_to_none(results),
        "machine": {"cpu": cpu(), "load_start": load_start, "load_end": load_average()},
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for name, r in results.items():
        rows = {**r["members"], "ensemble (all)": r["ensemble"], **r["ensembles_of_two"]}
        print(
            f"\n{name} ({len(sets[name])} pairs): accuracy | abstention won / lost / neither | prefers longer"
        )
        for label, m in rows.items():
            by = m.get("by_abstention") or {}
            cells = " / ".join(_fmt((by.get(k) or {}).get("accuracy")) for k in ("won", "lost", "neither"))
            print(f"  {label:22s} {_fmt(m['accuracy'])} | {cells} | {_fmt(m.get('rm_prefers_longer_rate'))}")
    print(f"wrote {args.out}")
    return 0


def _fmt(x: Any) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
