"""The training package's one error base: the `ragqa` CLI prints any subclass as one line and exits 1."""

from __future__ import annotations

from settings.errors import RagqaError


class TrainingError(RagqaError, RuntimeError):
    """A retrain (or one of its stages) cannot go on until the user changes something; the message says what."""


class NotSupportedError(TrainingError, NotImplementedError):
    """A configuration this code does not support (yet); the message says which setting to change."""
