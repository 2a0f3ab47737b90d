"""`ragqa eval`, `ragqa eval-rm` and `ragqa compare`: argument parsing only; the work is in runner.py.

Expected failures raise EvaluationError (and the other packages' error bases); the ragqa error boundary
(settings.errors.run_guarded) prints them as one line with exit code 1.

The lead wires `add_commands(subparsers)` into the `ragqa` parser; scripts/evaluate.py uses the same functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from evaluation.formats import PAIR_FORMATS, QA_FORMATS
from evaluation.runner import DEFAULT_BATCH_SIZE, EvalOptions

Handler = Callable[[argparse.Namespace], int]


def _as_background_job(handler: Handler) -> Handler:
    """Evaluations run as background jobs of RAGQA_HOME: lower priority, and fewer threads while `ragqa serve`
    runs there (model_store/cpu_share.py). Errors go to the one error boundary (settings.errors.run_guarded)."""

    def run(args: argparse.Namespace) -> int:
        from app.config import AppConfig
        from model_store.cpu_share import background_job

        cfg = AppConfig.load()
        with background_job(cfg.paths.home, getattr(args, "command", "eval"), cfg.cpu_share_policy()):
            return handler(args)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _qa_options(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        qa_path=Path(args.qa),
        fmt=args.format,
        model=getattr(args, "model", None),
        k=args.k,
        limit=args.limit,
        seed=args.seed,
        out_dir=Path(args.out) if args.out else None,
        index_dir=Path(args.index) if args.index else None,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        progress=not args.no_progress,
        batch_size=args.batch_size,
    )


@_as_background_job
def cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.runner import run_eval

    run_eval(_qa_options(args))
    return 0


@_as_background_job
def cmd_compare(args: argparse.Namespace) -> int:
    from evaluation.runner import run_compare

    run_compare(args.version_a, args.version_b, _qa_options(args), rm=Path(args.rm) if args.rm else None)
    return 0


@_as_background_job
def cmd_eval_rm(args: argparse.Namespace) -> int:
    from evaluation.runner import RMOptions, run_eval_rm

    run_eval_rm(
        RMOptions(
            pairs_path=Path(args.pairs),
            rm=Path(args.rm) if args.rm else None,
            fmt=args.format,
            limit=args.limit,
            seed=args.seed,
            out_dir=Path(args.out) if args.out else None,
            batch_size=args.batch_size,
            max_length=args.max_length,
            progress=not args.no_progress,
        )
    )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_qa_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--qa", required=True, help="labelled QA file: SQuAD/XQuAD/COVID-QA JSON, NQ-open or plain JSONL"
    )
    p.add_argument("--format", choices=QA_FORMATS, default=None, help="file format (default: detected)")
    p.add_argument("-k", "--k", type=_positive, default=None, help="passages per answer (default: config k)")
    p.add_argument(
        "--limit", type=_positive, default=None, help="evaluate a seeded random subset of N questions"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit subset (default 0)")
    p.add_argument(
        "--out", default=None, help="report folder (default RAGQA_HOME/evals/<time>-<file>-<model>)"
    )
    p.add_argument(
        "--index", default=None, help="use this existing index instead of indexing the file's own contexts"
    )
    p.add_argument(
        "--max-new-tokens", type=_positive, default=None, help="answer length cap (default: config)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        default=None,
        help="auto | off | N: trim the passages to their question-relevant sentences above N prompt tokens "
        "(default: config max_prompt_tokens)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"greedy answers per generate call (default {DEFAULT_BATCH_SIZE}; 1: one ask per question, the app's "
        "exact path with its latency); answers are saved as they complete and a rerun with the same --out and "
        "options resumes",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `eval`, `eval-rm` and `compare` on the `ragqa` sub-command parser."""
    p = subparsers.add_parser("eval", help="evaluate the ask path on a labelled QA file (report + charts)")
    _add_qa_arguments(p)
    p.add_argument("--model", default=None, help="model version to evaluate (default: current; not switched)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("compare", help="the same questions through two model versions, side by side")
    p.add_argument("version_a")
    p.add_argument("version_b")
    _add_qa_arguments(p)
    p.add_argument(
        "--rm", default=None, help="reward model folder that judges the win-rate (default: recorded one)"
    )
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("eval-rm", help="reward-model pair accuracy on a preference file")
    p.add_argument(
        "--pairs", required=True, help="preference pairs: Anthropic HH JSONL(.gz) or TRL preference JSONL"
    )
    p.add_argument(
        "--rm", default=None, help="reward model folder (default: the one the current version records)"
    )
    p.add_argument("--format", choices=PAIR_FORMATS, default=None, help="file format (default: detected)")
    p.add_argument("--limit", type=_positive, default=None, help="score a seeded random subset of N pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="report folder (default RAGQA_HOME/evals/<time>-rm-<file>)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument(
        "--max-length", type=_positive, default=1024, help="tokens per scored text (left-truncated)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval_rm)
