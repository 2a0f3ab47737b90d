"""Load benchmark: N simulated users hit a real `ragqa serve` process over HTTP with gradio_client.

Each user has its own session (its own gr.State) and loops until the deadline: ask (streamed) -> alternatives
(n=2) -> rank "A is better". Every loop is bounded by the duration and a per-user request cap; traffic goes to
127.0.0.1 only. The server is a SUBPROCESS (`python -m app serve`, the real command, with the real MiniLM
embedder) on a fresh RAGQA_HOME holding a tiny random Llama (hidden 64, 2 layers, SmolLM2 tokenizer), so the
numbers measure the app, the queue and the feedback store rather than the LM; `--model default` serves the real
SmolLM2-135M instead.

Reported: requests and errors per endpoint (error kinds; "queue full" separately), p50/p95 latency, rankings
acknowledged with ✅ vs ranking rows in the store (must be equal), and the store's integrity check.

    python benchmarks/load.py --users 20 --duration 120        # table + benchmarks/results/load.json

The helpers (`prepare_home`, `running_server`, `run_load`) are also used by tests/e2e and tests/faults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "load.json"

DOCS = {
    "kelvale/tower.md": "# The Zorbium Tower\n\nThe Zorbium Tower in Kelvale opened on 14 March 1893. "
    "It is 212 metres tall and was designed by the engineer Alma Pettersen.",
    "recipes/quillbread.txt": "Quillbread is baked from fermented oat flour and blue sorrel. "
    "The dough rests for nine hours before it is baked at 190 degrees.",
    "ships/marigold.md": "The research ship Marigold Vance carries a crew of 31 and was launched from Tessport "
    "in 2011. Its home port is Orrin Bay.",
}
QUESTIONS = [
    "When did the Zorbium Tower open?",
    "Who designed the Zorbium Tower?",
    "How long does quillbread dough rest?",
    "What is quillbread made from?",
    "How many crew does the Marigold Vance carry?",
    "What is the home port of the Marigold Vance?",
]
ACK = re.compile(r"✅ ranking saved \(#(\d+)\)")


# ---- the server ---------------------------------------------------------------------------------------
def build_tiny_llama(out: Path) -> Path:
    """A random Llama (hidden 64, 2 layers) with the real SmolLM2 tokenizer read from the offline GGUF."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from model_store.base_model import default_gguf_path
    from model_store.loading import tiny_llama_config

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prepare_home(
    home: Path,
    model_dir: Path | None,
    *,
    docs: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    embedder: Any = None,
) -> Path:
    """Fill RAGQA_HOME: `model_dir` as registry v0001 (None: the real default model), `docs` ingested, config.yaml.

    `embedder` None ingests with the real embedder that `ragqa serve` loads (MiniLM), so the served index matches.
    """
    import yaml

    from model_store.registry import ModelRegistry
    from retrieval.ingest import ingest
    from settings.paths import Paths

    paths = Paths(Path(home).resolve())
    paths.home.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(paths.models_dir)
    if model_dir is None:
        from model_store.base_model import ensure_base_model

        ensure_base_model(registry)
    else:
        registry.publish_folder(model_dir, {"kind": "base", "base_model": "tiny-random-llama"})
    # The documents sit beside the home, not in it: ingest refuses to read RAGQA_HOME (it holds users.json and
    # the feedback database).
    src = paths.home.parent / f"{paths.home.name}-docs"
    for rel, text in (docs or DOCS).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text, encoding="utf-8")
    if embedder is None:
        from retrieval.embedder import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder(None)
    ingest(src, paths.index_dir, embedder, progress=False)
    paths.config_file.write_text(yaml.safe_dump(config or {}))
    return paths.home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A `python -m app serve` subprocess; `url` ends with '/'."""

    proc: subprocess.Popen
    url: str
    log: Path

    def kill9(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no handler, no flush, no close."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def start_server(home: Path, port: int | None = None, *, timeout_s: float = 120.0) -> Server:
    """Start `python -m app serve` on 127.0.0.1 with RAGQA_HOME=home; return once it answers HTTP."""
    port = port or free_port()
    log = Path(home) / f"serve-{port}.log"
    env = {
        **os.environ,
        "RAGQA_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(server.url, timeout=2).close()
            return server
        except urllib.error.HTTPError:
            return server  # 401 with logins: the server is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"the server did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_server(home: Path, port: int | None = None) -> Iterator[Server]:
    server = start_server(home, port)
    try:
        yield server
    finally:
        server.stop()


# ---- the simulated users ------------------------------------------------------------------------------
@dataclass
class LoadReport:
    users: int
    duration_s: float
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    queue_full: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rankings_acknowledged: int = 0
    rankings_stored: int = 0
    acknowledged_missing: list[int] = field(default_factory=list)
    integrity_check: str = ""
    server: str = ""

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())


class _Tally:
    """Thread-safe counters shared by the user threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.queue_full = 0
        self.acked: list[int] = []

    def ok(self, endpoint: str, seconds: float) -> None:
        with self.lock:
            self.requests[endpoint] += 1
            self.latencies[endpoint].append(seconds * 1000)

    def error(self, endpoint: str, kind: str) -> None:
        with self.lock:
            self.requests[endpoint] += 1
            self.errors[endpoint] += 1
            if "queue is full" in kind.lower() or "queue full" in kind.lower():
                self.queue_full += 1
                kind = "queue full"
            self.kinds[f"{endpoint}: {kind[:120]}"] += 1


def _timed(tally: _Tally, endpoint: str, call: Any, check: Any) -> Any:
    """Run one request; record latency, or an error (exception, or a status that is not the expected one)."""
    t0 = time.perf_counter()
    try:
        result = call()
    except Exception as e:  # every failure is counted by kind, the loop goes on
        tally.error(endpoint, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return None
    problem = check(result)
    if problem:
        tally.error(endpoint, f"status: {problem}")
        return None
    tally.ok(endpoint, time.perf_counter() - t0)
    return result


def _user_loop(url: str, user: int, deadline: float, tally: _Tally, max_loops: int, auth: Any) -> None:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False, auth=auth)
    except Exception as e:
        tally.error("connect", f"{type(e).__name__}: {e}")
        return
    for i in range(max_loops):  # bounded: the deadline or max_loops, whichever comes first
        if time.monotonic() >= deadline:
            break
        question = QUESTIONS[(user + i) % len(QUESTIONS)]
        asked = _timed(
            tally,
            "ask",
            lambda q=question: client.submit(q, api_name="/ask").result(timeout=300),
            lambda r: None if "Answered in" in r[3] else r[3],
        )
        if asked is None:
            continue
        alts = _timed(
            tally,
            "alternatives",
            lambda: client.predict(2, api_name="/alternatives"),
            lambda r: None if str(r[-1]).startswith("2 alternatives") else r[-1],
        )
        if alts is None:
            continue
        ranked = _timed(
            tally,
            "rank",
            lambda: client.predict("A is better", "", api_name="/rank"),
            lambda r: None if ACK.search(str(r)) else r,
        )
        if ranked is not None:
            with tally.lock:
                tally.acked.append(int(ACK.search(str(ranked)).group(1)))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_load(
    url: str,
    home: Path,
    *,
    users: int = 20,
    duration_s: float = 120.0,
    max_loops: int = 10_000,
    auth: Any = None,
) -> LoadReport:
    """Run `users` simulated users against `url` for `duration_s`, then compare acknowledgements with the store."""
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError("the load benchmark only targets this machine (127.0.0.1)")
    tally = _Tally()
    deadline = time.monotonic() + duration_s
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=_user_loop, args=(url, u, deadline, tally, max_loops, auth), daemon=True)
        for u in range(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 600)
    elapsed = time.perf_counter() - t0
    report = LoadReport(users=users, duration_s=round(elapsed, 1))
    report.requests = dict(tally.requests)
    report.errors = dict(tally.errors)
    report.error_kinds = dict(tally.kinds)
    report.queue_full = tally.queue_full
    report.latency_ms = {
        ep: {
            "p50": round(_percentile(v, 50), 1),
            "p95": round(_percentile(v, 95), 1),
            "mean": round(statistics.fmean(v), 1),
        }
        for ep, v in tally.latencies.items()
        if v
    }
    report.rankings_acknowledged = len(tally.acked)
    _check_store(report, Path(home), set(tally.acked))
    return report


def _check_store(report: LoadReport, home: Path, acked: set[int]) -> None:
    from feedback_store.store import FeedbackStore

    store = FeedbackStore.open(home / "feedback.db", read_only=True)
    try:
        stored = {r.id for rec in store.iter_interactions() for r in rec.rankings}
        report.rankings_stored = len(stored)
        report.acknowledged_missing = sorted(acked - stored)
        report.integrity_check = store.integrity_check()
    finally:
        store.close()


def print_table(report: LoadReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"load: {report.users} users, {report.duration_s} s ({report.server})")
    for col in ("endpoint", "requests", "errors", "p50 ms", "p95 ms", "req/s"):
        table.add_column(col, justify="right" if col != "endpoint" else "left")
    for ep in ("ask", "alternatives", "rank"):
        lat = report.latency_ms.get(ep, {})
        n = report.requests.get(ep, 0)
        table.add_row(
            ep,
            str(n),
            str(report.errors.get(ep, 0)),
            f"{lat.get('p50', float('nan')):.0f}",
            f"{lat.get('p95', float('nan')):.0f}",
            f"{n / report.duration_s:.2f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"errors: {report.total_errors} (queue full: {report.queue_full}); "
        f"rankings acknowledged {report.rankings_acknowledged}, stored {report.rankings_stored}, "
        f"acknowledged but missing {len(report.acknowledged_missing)}; integrity_check: {report.integrity_check}"
    )
    for kind, n in sorted(report.error_kinds.items(), key=lambda kv: -kv[1]):
        console.print(f"  {n} x {kind}")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument(
        "--model",
        choices=["tiny", "default"],
        default="tiny",
        help="tiny random Llama (fast) or the real SmolLM2-135M",
    )
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="ragqa-load-") as tmp:
        home = Path(tmp) / "home"
        model_dir = build_tiny_llama(Path(tmp) / "tiny") if args.model == "tiny" else None
        # No rate limit: 20 users from one machine would otherwise be throttled, which is not what we measure.
        prepare_home(
            home, model_dir, config={"max_new_tokens": args.max_new_tokens, "rate_limit_per_minute": 0}
        )
        with running_server(home) as server:
            report = run_load(server.url, home, users=args.users, duration_s=args.duration)
        report.server = (
            f"python -m app serve, subprocess, model {args.model}, max_new_tokens {args.max_new_tokens}"
        )
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**asdict(report), "total_errors": report.total_errors}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if report.total_errors == 0 and not report.acknowledged_missing else 1


if __name__ == "__main__":
    sys.exit(main())
