"""Feedback store throughput: acknowledged writes/s with 1 and 8 writer threads, and export time for ~100k pairs.

Targets (from the product issue): > 1000 acknowledged writes/s; export of 100k pairs < 30 s. A write is
acknowledged when the store call returns (committed); measured with synchronous=FULL (the default,
power-cut safe) and NORMAL (process-crash safe). Prints a table and writes
benchmarks/results/store_throughput.json. No assertions: numbers only.

    .venv/bin/python benchmarks/store_throughput.py [--writes 2000] [--pairs 100000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import threading
import time
from pathlib import Path

from feedback_store.export import export_snapshot
from feedback_store.store import FeedbackStore

RESULTS = Path(__file__).parent / "results" / "store_throughput.json"
WORDS = "the library opens at nine on weekdays and closes on sundays while the archive needs a card".split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _passages(rng: random.Random, k: int = 3) -> list[dict]:
    return [
        {
            "chunk_id": f"doc{rng.randrange(1000)}#{i}",
            "source": f"doc{i}.md",
            "text": _words(rng, 50),
            "score": 1 / (i + 1),
        }
        for i in range(k)
    ]


def _candidates(rng: random.Random, k: int) -> list[dict]:
    return [
        {
            "text": _words(rng, 40) + f" [{i + 1}] #{rng.random():.12f}",
            "model_version": f"v000{1 + i % 2}",
            "sampling": {"seed": rng.randrange(10**6), "temperature": 0.7, "top_p": 0.9},
            "latency_ms": rng.uniform(200, 900),
        }
        for i in range(k)
    ]


def _writer(store: FeedbackStore, seed: int, n: int, latencies: list[float]) -> None:
    """n acknowledged writes: an interaction (2 candidates) then a ranking, rating or correction on it."""
    rng = random.Random(seed)
    last = None
    for i in range(n):
        t0 = time.perf_counter()
        if last is None or i % 2 == 0:
            last = store.record_interaction(
                _words(rng, 8) + "?", _passages(rng), _candidates(rng, 2), session_id=f"bench-{seed}"
            )
        else:
            a, b = last.candidate_ids
            kind = i % 6
            if kind == 1:
                store.record_ranking(last.interaction_id, [[a], [b]], session_id=f"bench-{seed}")
            elif kind == 3:
                store.record_rating(a, True, session_id=f"bench-{seed}", client_token=f"{seed}-{i}")
            else:
                store.record_correction(
                    last.interaction_id, _words(rng, 20), replaces=[b], session_id=f"bench-{seed}"
                )
        latencies.append(time.perf_counter() - t0)


def measure_writes(root: Path, threads: int, total: int, synchronous: str) -> dict:
    with FeedbackStore.open(root / f"writes-{threads}-{synchronous}.db", synchronous=synchronous) as store:
        latencies: list[float] = []
        workers = [
            threading.Thread(target=_writer, args=(store, t, total // threads, latencies))
            for t in range(threads)
        ]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        integrity = store.integrity_check()
    latencies.sort()
    return {
        "synchronous": synchronous,
        "threads": threads,
        "writes": len(latencies),
        "seconds": round(elapsed, 3),
        "writes_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 3),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 3),
        "integrity_check": integrity,
    }


def measure_export(root: Path, pairs: int) -> dict:
    """Interactions of 4 candidates fully ranked (6 pairs each) until `pairs` pairs, then one export."""
    rng = random.Random(0)
    db = root / "export.db"
    t0 = time.perf_counter()
    with FeedbackStore.open(db) as store:
        for i in range(-(-pairs // 6)):
            ids = store.record_interaction(
                f"question {i}: " + _words(rng, 8) + "?",
                _passages(rng),
                _candidates(rng, 4),
                session_id=f"s{i % 50}",
            )
            order = list(ids.candidate_ids)
            rng.shuffle(order)
            store.record_ranking(ids.interaction_id, [[c] for c in order], session_id=f"r{i % 50}")
        fill = time.perf_counter() - t0
        t1 = time.perf_counter()
        manifest = export_snapshot(store, root / "export", test_fraction=0.1)
        export_s = time.perf_counter() - t1
    size = sum(p.stat().st_size for p in (root / "export").glob("*.jsonl"))
    return {
        "pairs_written": manifest.rows("preferences"),
        "interactions": manifest.counts["interactions"],
        "fill_seconds": round(fill, 2),
        "export_seconds": round(export_s, 2),
        "pairs_per_s": round(manifest.rows("preferences") / export_s, 1),
        "export_mb": round(size / 1e6, 1),
        "db_mb": round(db.stat().st_size / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="acknowledged writes per run")
    parser.add_argument("--pairs", type=int, default=100_000, help="preference pairs to export")
    parser.add_argument("--dir", default=None, help="where to put the databases (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        writes = [measure_writes(root, t, args.writes, sync) for sync in ("FULL", "NORMAL") for t in (1, 8)]
        export = measure_export(root, args.pairs)

    print(
        f"{'sync':>7} {'writers':>8} {'writes':>8} {'seconds':>8} {'writes/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    )
    for w in writes:
        print(
            f"{w['synchronous']:>7} {w['threads']:>8} {w['writes']:>8} {w['seconds']:>8} {w['writes_per_s']:>10} {w['p50_ms']:>8} {w['p99_ms']:>8}"
        )
    print(
        f"\nexport: {export['pairs_written']} pairs from {export['interactions']} interactions in "
        f"{export['export_seconds']} s ({export['pairs_per_s']} pairs/s, {export['export_mb']} MB); "
        f"filling the store took {export['fill_seconds']} s"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "default_synchronous": "FULL",
                "writes": writes,
                "export": export,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
