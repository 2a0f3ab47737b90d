"""The feedback store's exceptions: one base class so callers can catch everything the store raises.

`FeedbackValidationError` means the request itself is wrong (fix the input); `FeedbackStoreUnavailable`
means the database could not take the write right now (locked, read-only, disk full): the transaction
was rolled back, nothing was acknowledged, and the caller may retry later.
"""

from __future__ import annotations

from settings.errors import RagqaError


class FeedbackError(RagqaError):
    """Base class of every error the feedback store raises on purpose."""


class FeedbackValidationError(FeedbackError, ValueError):
    """The request is malformed: empty ranking, unknown candidate, text too long, ..."""


class FeedbackNotFound(FeedbackValidationError):
    """An id names no interaction or candidate in this store."""


class FeedbackConflict(FeedbackValidationError):
    """A client token was reused for a different request."""


class FeedbackStoreUnavailable(FeedbackError):
    """The database cannot accept the write: locked too long, read-only, disk full or unreadable."""


class FeedbackImportError(FeedbackValidationError):
    """A file to import is malformed; the message names the line and what is wrong."""
