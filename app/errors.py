"""The app's one error base: the `ragqa` CLI prints any subclass as one line and exits 1."""

from __future__ import annotations

from settings.errors import RagqaError


class AppError(RagqaError):
    """Serving could not do what was asked (bad question, no login, generation failed); the message says why."""
