"""Feedback store: records what users asked, saw and preferred; exports it as TRL datasets.

The app, the CLI and training use `FeedbackStore` (store.py), `export_snapshot` (export.py) and
`import_file` (importer.py); nothing outside this package runs SQL on the feedback database.
"""

from feedback_store.errors import (
    FeedbackConflict,
    FeedbackError,
    FeedbackImportError,
    FeedbackNotFound,
    FeedbackStoreUnavailable,
    FeedbackValidationError,
)
from feedback_store.records import InteractionIds, InteractionRecord
from feedback_store.store import FeedbackStore

__all__ = [
    "FeedbackConflict",
    "FeedbackError",
    "FeedbackImportError",
    "FeedbackNotFound",
    "FeedbackStore",
    "FeedbackStoreUnavailable",
    "FeedbackValidationError",
    "InteractionIds",
    "InteractionRecord",
]
