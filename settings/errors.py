"""The root of the project's expected errors: each package's one error base class derives from it.

An expected error means "the user must change something" (bad input, a missing model, too little data); its message
is one line saying what to do. `run_guarded` is THE error boundary: the `ragqa` command (app/cli.py `main`) runs
every subcommand through it, and so do the `python -m training.*` developer entry points; nothing else catches
expected errors to print them. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class RagqaError(Exception):
    """An expected failure with a one-line, user-facing message."""


def one_line(error: BaseException) -> str:
    """The message on one line (a converter's last lines, a list of bad input lines: joined with "; ")."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def run_guarded(command: Callable[[], int | None]) -> int:
    """Run a command; an expected error becomes one `error:` line on stderr and exit code 1.

    Expected errors are the project's (every package's error base derives from RagqaError) and OSError (a file
    the user named cannot be read or written). Ctrl-C exits 130 with one line.
    """
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (RagqaError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
