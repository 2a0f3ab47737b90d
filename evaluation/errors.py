"""The evaluation package's one error base: the `ragqa` CLI prints any subclass as one line and exits 1."""

from __future__ import annotations

from settings.errors import RagqaError


class EvaluationError(RagqaError):
    """An evaluation cannot run (bad data file, missing model or reward model); the message says what to do."""
