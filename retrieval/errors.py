"""Errors the retrieval package raises on bad input or a bad index; each message says what to do."""

from __future__ import annotations

from settings.errors import RagqaError

REBUILD_HINT = "rebuild it with `ragqa ingest PATH --rebuild`"


class RetrievalError(RagqaError):
    """Base class: catch this in the app/CLI to show the message instead of a traceback."""


class IndexMissingError(RetrievalError):
    """No index folder (or an empty one): nothing has been ingested yet."""

    def __init__(self, index_dir: object) -> None:
        super().__init__(f"no documents ingested yet: run `ragqa ingest PATH` (looked in {index_dir})")


class IndexMismatchError(RetrievalError):
    """The index was built with another embedder (name or dimension) than the one in use."""


class IndexCorruptError(RetrievalError):
    """A file of the index is missing, truncated or inconsistent with the others."""

    def __init__(self, index_dir: object, problem: str) -> None:
        super().__init__(f"the index in {index_dir} is damaged ({problem}); {REBUILD_HINT}")


class InvalidConfigError(RetrievalError):
    """A retrieval setting is out of range (e.g. chunk overlap not smaller than the chunk)."""


class EmbedderError(RetrievalError):
    """The embedding model cannot be loaded (path missing, not a sentence-transformers model, not cached)."""


class IngestError(RetrievalError):
    """The path given to ingest cannot be ingested at all (missing, not a file or folder)."""


class DocumentSkipped(RetrievalError):
    """One document cannot be indexed; ingest records `reason` and carries on with the others."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
