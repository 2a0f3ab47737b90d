"""The CPU-share policy between `ragqa serve` and `ragqa retrain` / `ragqa eval` on one RAGQA_HOME: thread counts
for faked core counts, server/job presence through marker files (alive check, stale and reused pids), and a real
background job in a child process (nice, torch threads, the marker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model_store.cpu_share import (
    CpuSharePolicy,
    JobWatch,
    ServerThreads,
    background_threads,
    marker,
    plan_job,
    running,
    server_threads,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = CpuSharePolicy()


@pytest.mark.parametrize(
    ("cores", "server_alone", "server_beside_job", "job_alone", "job_beside_server"),
    [
        (1, 1, 1, 1, 1),  # one core: nothing to split; nice alone decides
        (2, 2, 1, 2, 1),  # the measured case: llama.cpp keeps ~20 tok/s on 1 thread beside training
        (4, 4, 2, 4, 2),
        (16, 16, 8, 16, 8),
    ],
)
def test_default_policy_splits_the_cores(
    cores: int, server_alone: int, server_beside_job: int, job_alone: int, job_beside_server: int
) -> None:
    assert server_threads(cores, False, DEFAULT) == server_alone
    assert server_threads(cores, True, DEFAULT) == server_beside_job
    assert background_threads(cores, False, DEFAULT) == job_alone
    assert background_threads(cores, True, DEFAULT) == job_beside_server


def test_configured_server_cores_never_take_every_core() -> None:
    policy = CpuSharePolicy(server_cores=6)
    assert server_threads(8, True, policy) == 6 and background_threads(8, True, policy) == 2
    greedy = CpuSharePolicy(server_cores=10)
    assert server_threads(8, True, greedy) == 7 and background_threads(8, True, greedy) == 1


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _write_marker(home: Path, kind: str, pid: int, started: str | None) -> Path:
    (home / "run").mkdir(parents=True, exist_ok=True)
    path = home / "run" / f"{kind}-{pid}.json"
    path.write_text(json.dumps({"pid": pid, "started": started}))
    return path


def test_markers_count_only_live_processes(tmp_path: Path) -> None:
    child = _child()
    try:
        live = _write_marker(tmp_path, "server", child.pid, _start_time(child.pid))
        reused = _write_marker(tmp_path, "job", child.pid, "1")  # same pid, another start time: a reused pid
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        stale = _write_marker(tmp_path, "server", dead.pid, None)
        assert [s["pid"] for s in running(tmp_path, "server")] == [child.pid]
        assert running(tmp_path, "job") == []
        assert live.exists() and not stale.exists() and not reused.exists()  # stale markers are cleaned up
    finally:
        child.kill()
        child.wait()
    assert running(tmp_path, "server") == []


def test_own_marker_is_written_and_removed(tmp_path: Path) -> None:
    with marker(tmp_path, "server", port=7860) as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["port"] == 7860
        assert running(tmp_path, "server") == []  # a process never counts itself
    assert not path.exists()


def test_job_plan_and_server_threads_follow_presence(tmp_path: Path) -> None:
    assert plan_job(tmp_path, DEFAULT, cores=2).threads == 2
    child = _child()
    try:
        _write_marker(tmp_path, "server", child.pid, _start_time(child.pid))
        share = plan_job(tmp_path, DEFAULT, cores=2)
        assert (share.threads, share.nice, share.servers) == (1, 10, [child.pid])
        assert "1 of 2 cores, nice +10, beside the server" in share.text()

        threads = ServerThreads(tmp_path, DEFAULT, cores=2)
        threads.job_running.every_s = 0.0
        assert threads() == 2
        job = _write_marker(tmp_path, "job", child.pid, _start_time(child.pid))
        assert threads() == 1
        job.unlink()
        assert threads() == 2
    finally:
        child.kill()
        child.wait()


def test_job_watch_rechecks_at_most_every_interval(tmp_path: Path) -> None:
    watch = JobWatch(tmp_path, every_s=3600)
    assert watch() is False
    _write_marker(tmp_path, "job", os.getppid(), None)  # a live process that is not this one
    assert watch() is False  # cached: a directory listing per request at most every `every_s`
    watch.every_s = 0.0
    assert watch() is True


def test_background_job_lowers_priority_and_threads_beside_a_server(tmp_path: Path) -> None:
    """A real child process enters background_job next to a (faked, live) server on 2 cores."""
    server = _child()
    try:
        _write_marker(tmp_path, "server", server.pid, _start_time(server.pid))
        code = (
            "import json, os, sys, torch\n"
            "from model_store import cpu_share, hardware\n"
            "hardware.usable_cores = lambda *a, **k: 2\n"
            f"home = {str(tmp_path)!r}\n"
            "before = os.nice(0)\n"
            "with cpu_share.background_job(home, 'retrain', cpu_share.CpuSharePolicy()) as share:\n"
            "    markers = [p.name for p in (cpu_share.Path(home) / 'run').glob('job-*.json')]\n"
            "    print(json.dumps({'nice': os.nice(0) - before, 'torch': torch.get_num_threads(),\n"
            "        'omp': os.environ['OMP_NUM_THREADS'], 'markers': markers}))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
    finally:
        server.kill()
        server.wait()
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["nice"] == min(19, os.nice(0) + 10) - os.nice(0)  # +10, capped at 19 (pytest may run niced)
    assert got["torch"] == 1 and got["omp"] == "1"
    assert len(got["markers"]) == 1
    assert "retrain: cpu: 1 of 2 cores, nice +10, beside the server" in out.stderr
    assert not list((tmp_path / "run").glob("job-*.json"))  # removed at the end


def test_app_config_checks_the_policy_keys(ragqa_home: Path) -> None:
    from app.config import AppConfig, ConfigError

    (ragqa_home / "config.yaml").write_text("server_cores: 1\nbackground_nice: 5\n")
    policy = AppConfig.load().cpu_share_policy()
    assert (policy.server_cores, policy.background_nice) == (1, 5)
    (ragqa_home / "config.yaml").write_text("background_nice: 40\n")
    with pytest.raises(ConfigError, match="background_nice"):
        AppConfig.load()
