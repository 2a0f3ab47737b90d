"""`ragqa feedback stats|export|import|delete`: the feedback store from the command line.

`add_commands(subparsers)` registers the `feedback` group; each subcommand sets `func` (and
`handler`, the same function) to a handler `(args) -> int`. Errors raise FeedbackError; the ragqa error
boundary (settings.errors.run_guarded) prints them as one line with exit code 1, never a traceback. The database defaults to $RAGQA_FEEDBACK_DSN when set (e.g. a postgresql:// DSN
shared by app replicas), else `Paths.from_env().feedback_db` (RAGQA_HOME); `--db` (a path, sqlite:///path or
postgresql://...) overrides both.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from feedback_store.errors import FeedbackError

if TYPE_CHECKING:
    from feedback_store.store import FeedbackStore

Handler = Callable[[argparse.Namespace], int]


def _default_db() -> str | Path:
    from feedback_store.store import feedback_target
    from settings.paths import Paths

    return feedback_target(Paths.from_env().feedback_db)


def _open(args: argparse.Namespace, *, must_exist: bool = True) -> FeedbackStore:
    from feedback_store.postgres_db import is_postgres_dsn
    from feedback_store.store import FeedbackStore, sqlite_path_from_dsn

    target = args.db or _default_db()
    if is_postgres_dsn(str(target)):
        return FeedbackStore.open(str(target))
    db = sqlite_path_from_dsn(target)
    if must_exist and not db.exists():
        raise FeedbackError(f"no feedback database at {db} (nothing recorded yet, or pass --db)")
    return FeedbackStore.open(db)


def cmd_stats(args: argparse.Namespace) -> int:
    """Print the store's counts (a table, or JSON with --json)."""
    with _open(args) as store:
        stats = store.stats()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    per_model = stats.pop("per_model_version")
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        print(f"{key:<{width}}  {value}")
    if per_model:
        print(f"\n{'model version':<24} {'candidates':>10} {'up':>6} {'down':>6} {'wins':>6} {'losses':>6}")
        for model, s in per_model.items():
            print(
                f"{model:<24} {s['candidates']:>10} {s['up']:>6} {s['down']:>6} {s['wins']:>6} {s['losses']:>6}"
            )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a snapshot; without --out it goes to RAGQA_HOME/exports/<snapshot id prefix>/."""
    from feedback_store.export import export_snapshot

    with _open(args) as store:
        if args.out:
            manifest = export_snapshot(
                store, args.out, test_fraction=args.test_fraction, min_margin=args.min_margin, progress=True
            )
            out = Path(args.out)
        else:
            from settings.paths import Paths

            exports = Paths.from_env().exports_dir
            tmp = exports / ".partial-export"
            shutil.rmtree(tmp, ignore_errors=True)
            manifest = export_snapshot(
                store, tmp, test_fraction=args.test_fraction, min_margin=args.min_margin, progress=True
            )
            out = exports / manifest.snapshot_id[:16]
            if out.exists():  # the same snapshot was exported before: identical content
                shutil.rmtree(tmp)
            else:
                tmp.rename(out)
    files = ", ".join(f"{n}={f['rows']}" for n, f in manifest.files.items())
    print(f"snapshot {manifest.snapshot_id[:16]} -> {out}\n{files}\nsimulated rows: {manifest.simulated}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import preferences or demonstrations from a JSONL file or an Open WebUI export (all or nothing)."""
    from feedback_store.importer import import_file

    with _open(args, must_exist=False) as store:
        result = import_file(store, args.file)
    print(
        f"imported {result.imported} items from {args.file} as {result.origin}; {result.duplicates} already present"
    )
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete everything one rater session recorded."""
    with _open(args) as store:
        n = store.delete_session(args.session)
    print(f"deleted {n} items of session {args.session}")
    return 0


def _help(parser: argparse.ArgumentParser) -> Handler:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 1

    return show


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `feedback` and its subcommands on the `ragqa` parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=None,
        help="feedback database: a path, sqlite:///path or postgresql://... "
        "(default: $RAGQA_FEEDBACK_DSN, else RAGQA_HOME/feedback.db)",
    )

    feedback = subparsers.add_parser("feedback", help="inspect, export, import or delete recorded feedback")
    feedback.set_defaults(func=_help(feedback), handler=_help(feedback))
    sub = feedback.add_subparsers(dest="feedback_command", metavar="{stats,export,import,delete}")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=handler.__doc__)
        p.set_defaults(func=handler, handler=handler)
        return p

    p = add("stats", cmd_stats, "counts of interactions, pairs, ratings, raters, per model version")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add(
        "export",
        cmd_export,
        "write TRL preference / SFT / unpaired (KTO) / prompt JSONL files and a manifest",
    )
    p.add_argument("--out", default=None, help="output folder (default: RAGQA_HOME/exports/<snapshot id>)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of questions in the test split")
    p.add_argument("--min-margin", type=int, default=0, help="drop ranking pairs closer than this")

    p = add("import", cmd_import, "import preferences/sft JSONL (ours or TRL's) or an Open WebUI export")
    p.add_argument("file", help="a JSONL file, or Open WebUI's feedback export (a JSON array)")

    p = add("delete", cmd_delete, "delete everything a rater session recorded")
    p.add_argument("--session", required=True, help="the rater session id")
