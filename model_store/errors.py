"""The model store's one error base: the `ragqa` CLI prints any subclass as a one-line message."""

from __future__ import annotations


class ModelStoreError(RuntimeError):
    """A published model could not be found, loaded, converted or scored; the message says what to do."""
