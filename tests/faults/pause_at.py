"""Run the real `ragqa` command, frozen (SIGSTOP) at one exact point so a test can `kill -9` it there.

    python tests/faults/pause_at.py POINT MARKER_FILE retrain --resume RUN_ID ...

The product has no test hooks. This harness adds a Python audit hook (sys.addaudithook: the interpreter reports
every open/mkdir/rename with its path) to the unmodified CLI; when the event of POINT happens it writes
MARKER_FILE and stops itself with SIGSTOP, before the operation runs. The test sees the marker and sends SIGKILL:
a real crash at a known place, without timing races.

Points (see POINTS): inside PPO while step 2's checkpoint is half written, inside the merge while merged.partial
is half written, in publish with vNNNN.partial complete but not yet renamed, and after the rename but before
`current` is switched.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any


def _opened_for_writing(args: tuple[Any, ...], suffix: str) -> bool:
    path, mode = str(args[0]), args[1]
    return path.endswith(suffix) and isinstance(mode, str) and ("w" in mode or "a" in mode)


POINTS: dict[str, tuple[str, Callable[[tuple[Any, ...]], bool]]] = {
    # PPO step 1 saved; step 2's checkpoint has adapters/tensors but no state.json yet (state.json marks it done).
    "ppo-checkpoint-2": ("open", lambda a: _opened_for_writing(a, "checkpoints/step-000002/state.json")),
    # PPO step 1's checkpoint half written: the first checkpoint of the run is incomplete.
    "ppo-checkpoint-1": ("open", lambda a: _opened_for_writing(a, "checkpoints/step-000001/state.json")),
    # The merged weights are written (safetensors), the tokenizer files are being written into merged.partial.
    "merge-save": ("open", lambda a: "/merged.partial/" in str(a[0]) and _opened_for_writing(a, ".json")),
    # Every file of the new version is written and fsynced in vNNNN.partial; the rename is next.
    "publish-rename": ("os.rename", lambda a: str(a[0]).endswith(".partial") and "/models/" in str(a[0])),
    # The version folder is renamed (published), `current` is about to be switched to it.
    "current-switch": ("os.rename", lambda a: os.path.basename(str(a[0])).startswith(".current.")),
}


def install(point: str, marker: str) -> None:
    event_name, matches = POINTS[point]
    fired = False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal fired
        if fired or event != event_name or not matches(args):
            return
        fired = True  # set first: writing the marker opens a file, which calls this hook again
        with open(marker, "w") as fh:
            fh.write(f"{point} {event} {args[0]}\n")
        os.kill(os.getpid(), signal.SIGSTOP)

    sys.addaudithook(hook)


def main() -> int:
    point, marker, *argv = sys.argv[1:]
    if point not in POINTS:
        print(f"unknown point {point!r}; points: {', '.join(POINTS)}", file=sys.stderr)
        return 2
    install(point, marker)
    from app.cli import main as ragqa

    return ragqa(argv)


if __name__ == "__main__":
    sys.exit(main())
