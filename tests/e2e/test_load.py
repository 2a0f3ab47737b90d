"""A short run of benchmarks/load.py as a test: 8 users for 10 s against a real `python -m app serve`.

Proves under concurrency: no request fails, and every ranking a user was told was saved (✅ #id) is a row in the
store, with no extra rows; the SQLite integrity check passes.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.load import prepare_home, run_load, running_server


def test_short_load_stores_every_acknowledged_ranking(ragqa_home: Path, tiny_llama_dir: Path) -> None:
    home = prepare_home(ragqa_home, tiny_llama_dir, config={"max_new_tokens": 8, "rate_limit_per_minute": 0})
    with running_server(home) as server:
        report = run_load(server.url, home, users=8, duration_s=10)
    print(
        f"load: {report.users} users, {report.duration_s} s, requests {report.requests}, "
        f"errors {report.total_errors}, rankings acknowledged {report.rankings_acknowledged}, "
        f"stored {report.rankings_stored}, p95 {report.latency_ms}"
    )
    assert report.total_errors == 0, report.error_kinds
    assert report.requests["rank"] >= 8, report.requests  # every user got through at least one loop
    assert report.rankings_acknowledged == report.requests["rank"]
    assert report.rankings_stored == report.rankings_acknowledged and not report.acknowledged_missing
    assert report.integrity_check == "ok"
