"""Sharing the CPU between the server and background jobs (retrain, eval) on the same RAGQA_HOME.

The policy, explicit and configurable (RAGQA_HOME/config.yaml: `server_cores`, `background_nice`):
  - alone, the server and every job use all usable cores (affinity and cgroup quota, model_store.hardware);
  - a job started while a server runs on the same home uses `cores - server_cores` threads (at least 1) and
    always runs at `background_nice` (default +10), so the server's threads win the CPU when both want it;
  - a server that sees a running job generates on its `server_cores` only (default half the cores, at least 1),
    so no server thread shares a core with a training thread.
Why: measured on a 2-core AVX2 EPYC, llama.cpp decoding beside a 2-thread torch job collapsed to 4-11 tok/s with
first tokens at 6-8 s when it used 2 threads; with 1 thread it kept ~20 tok/s (31-39 idle). A llama.cpp step waits
for its slowest thread, so one thread that loses its core to training stalls them all.

Who runs is known from marker files in RAGQA_HOME/run/: `server-<pid>.json` written by `ragqa serve`,
`job-<pid>.json` by `ragqa retrain` / `ragqa eval`. A marker counts only while its process is alive (and has the
recorded start time, so a reused pid does not count); stale markers are removed when seen.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = "run"


@dataclass(frozen=True)
class CpuSharePolicy:
    server_cores: int | None = None  # cores kept for a running server; None = half the usable cores (>= 1)
    background_nice: int = 10  # niceness added to retrain / eval (0 = normal priority)

    def reserved(self, cores: int) -> int:
        """Cores the server keeps when a job runs beside it (never all of them when there are 2 or more)."""
        wanted = self.server_cores if self.server_cores is not None else cores // 2
        return max(1, min(wanted, cores - 1)) if cores > 1 else 1


def background_threads(cores: int, server_running: bool, policy: CpuSharePolicy) -> int:
    """Threads for a retrain / eval: all cores alone, the ones the server does not keep beside a server."""
    if not server_running:
        return cores
    return max(1, cores - policy.reserved(cores))


def server_threads(cores: int, job_running: bool, policy: CpuSharePolicy) -> int:
    """Threads the server generates with: all cores alone, its reserved cores while a job runs."""
    return policy.reserved(cores) if job_running else cores


# ---- markers ------------------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return started is None or _start_time(pid) in (None, started)


def running(home: Path, kind: str) -> list[dict]:
    """Live markers of `kind` ("server" | "job") under home/run; stale ones are removed."""
    folder = Path(home) / RUN_DIR
    found = []
    for path in sorted(folder.glob(f"{kind}-*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(path.read_text())
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written or foreign: not proof of a live process, left alone
        if pid != os.getpid() and _alive(pid, info.get("started")):
            found.append(info)
        elif pid != os.getpid():
            with contextlib.suppress(OSError):
                path.unlink()
    return found


@contextlib.contextmanager
def marker(home: Path, role: str, **info: object) -> Iterator[Path]:
    """Announce this process as a `role` ("server" | "job") on `home` while the block runs."""
    folder = Path(home) / RUN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role}-{os.getpid()}.json"
    record = {"pid": os.getpid(), "started": _start_time(os.getpid()), "since": time.time(), **info}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # never a half-written marker
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


class JobWatch:
    """Is a background job running on `home`? Re-checked at most every `every_s` (a directory listing)."""

    def __init__(self, home: Path, every_s: float = 2.0) -> None:
        self.home = Path(home)
        self.every_s = every_s
        self._checked = -float("inf")
        self._running = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= self.every_s:
            self._running = bool(running(self.home, "job"))
            self._checked = now
        return self._running


class ServerThreads:
    """The server's thread count right now: all usable cores, its reserved ones while a job runs on `home`."""

    def __init__(self, home: Path, policy: CpuSharePolicy, cores: int) -> None:
        self.cores = cores
        self.policy = policy
        self.job_running = JobWatch(home)

    def __call__(self) -> int:
        return server_threads(self.cores, self.job_running(), self.policy)


# ---- background jobs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobShare:
    threads: int
    nice: int
    cores: int
    servers: list[int]

    def text(self) -> str:
        beside = f"beside the server (pid {', '.join(map(str, self.servers))})" if self.servers else "alone"
        return f"cpu: {self.threads} of {self.cores} cores, nice +{self.nice}, {beside}"


def plan_job(home: Path, policy: CpuSharePolicy, cores: int | None = None) -> JobShare:
    from model_store.hardware import usable_cores

    cores = cores or usable_cores()
    servers = [int(s["pid"]) for s in running(home, "server")]
    return JobShare(background_threads(cores, bool(servers), policy), policy.background_nice, cores, servers)


@contextlib.contextmanager
def background_job(
    home: Path, kind: str, policy: CpuSharePolicy, *, announce: bool = True
) -> Iterator[JobShare]:
    """Run the block as a background job: lower priority, the policy's threads, a marker the server sees.

    The thread count goes to torch (set_num_threads) and to OMP/MKL through the environment for any child
    process; a running server then keeps its reserved cores (server_threads).
    """
    share = plan_job(home, policy)
    if announce and share.servers:  # the unusual case, worth a line; alone, nothing is said
        import sys

        print(f"{kind}: {share.text()}", file=sys.stderr, flush=True)
    if share.nice > 0:
        os.nice(share.nice)  # for the rest of the process: an unprivileged process cannot raise it back
    saved_env = {var: os.environ.get(var) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(saved_env, str(share.threads)))
    import torch

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(share.threads)
    try:
        with marker(home, "job", kind=kind, threads=share.threads):
            yield share
    finally:
        torch.set_num_threads(saved_threads)
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
