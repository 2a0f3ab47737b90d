"""The answers of an evaluation as they complete, one JSON line each, so a killed run resumes where it stopped.

The first line records the options that decide the answers (file, selection, model, retrieval and decoding
settings); a rerun into the same folder with other options is refused, since mixing the answers of two settings
would make a report that neither run describes. Every later line is one answered question keyed by its position
in the selection. Each line is flushed and fsync'd before the next question counts as done, so a crash loses at
most the line being written; a torn last line is dropped on reopening.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from evaluation.errors import EvaluationError

JOURNAL_VERSION = 1


class JournalError(EvaluationError, RuntimeError):
    """The report folder holds answers of another evaluation; the message says what differs."""


class AnswerJournal:
    """Append-only JSONL of answered questions: `{"n": position, "record": {...}}` after one options line."""

    def __init__(
        self,
        path: Path,
        options: dict[str, Any],
        implied: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> None:
        """`implied`: options that older journals did not record, each with the value an old header implies (a
        function of that header), so a journal written before the option existed still resumes where nothing
        that decides the answers changed."""
        self.path = Path(path)
        self.options = options
        self.implied = dict(implied or {})
        self.done: dict[int, dict[str, Any]] = {}
        self._file: IO[str] | None = None

    def open(self) -> AnswerJournal:
        """Read what an earlier run of the same options answered, then open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        else:
            self._write_line({"journal": JOURNAL_VERSION, "options": self.options}, mode="w")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held until close()
        return self

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8").split("\n")
        complete = lines[:-1]  # everything before the last newline; the rest is a torn line or ""
        if not complete:  # killed before the options line was complete
            self._write_line({"journal": JOURNAL_VERSION, "options": self.options}, mode="w")
            return
        rows = [self._parse(i, line) for i, line in enumerate(complete, start=1)]
        if rows[0].get("journal") != JOURNAL_VERSION or "options" not in rows[0]:
            raise JournalError(
                f"{self.path} is not an answer journal of this version: pass another --out folder"
            )
        self._check_options(rows[0]["options"])
        for row in rows[1:]:
            self.done[int(row["n"])] = row["record"]
        if lines[-1]:  # drop the torn line, so the next append starts on a line of its own
            with open(self.path, "r+", encoding="utf-8") as f:
                f.truncate(len("\n".join(complete).encode("utf-8")) + 1)

    def _parse(self, number: int, line: str) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or (
            number > 1 and not (isinstance(row.get("n"), int) and isinstance(row.get("record"), dict))
        ):
            raise JournalError(
                f"line {number} of {self.path} is not an answer record; delete the file to start over"
            )
        return row

    def _check_options(self, recorded: dict[str, Any]) -> None:
        recorded = {
            **{key: imply(recorded) for key, imply in self.implied.items() if key not in recorded},
            **recorded,
        }
        differ = sorted(
            key for key in set(recorded) | set(self.options) if recorded.get(key) != self.options.get(key)
        )
        if differ:
            shown = "; ".join(f"{k}: {recorded.get(k)!r} then, {self.options.get(k)!r} now" for k in differ)
            raise JournalError(
                f"{self.path} holds answers of an evaluation with other options ({shown}): rerun with the "
                "same options to resume it, or pass another --out folder"
            )

    def _write_line(self, row: dict[str, Any], mode: str = "a") -> None:
        with open(self.path, mode, encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, n: int, record: dict[str, Any]) -> None:
        """Record question `n` as answered; on disk (fsync'd) when this returns."""
        assert self._file is not None, "open() the journal first"
        self._file.write(json.dumps({"n": n, "record": record}, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done[n] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> AnswerJournal:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
