"""One app replica for tests/replicas: `python tests/replicas/replica_app.py PORT`.

The equivalent of `python -m app serve --port PORT` with the hash embedder (no embedding model to load) and the
feedback store named by $RAGQA_FEEDBACK_DSN (shared by every replica); RAGQA_HOME (registry, index) is shared too.
"""

from __future__ import annotations

import sys

from app.config import AppConfig
from app.services import Services
from app.ui import launch
from feedback_store.store import FeedbackStore, feedback_target
from retrieval.embedder import HashEmbedder


def main() -> None:
    cfg = AppConfig.load(max_new_tokens=8, port=int(sys.argv[1]), host="127.0.0.1")
    services = Services(cfg, embedder=HashEmbedder())
    # What app/services.py does once it opens `feedback_target(config.paths.feedback_db)` (lead's one-line change).
    services._store = FeedbackStore.open(feedback_target(cfg.paths.feedback_db))
    print(f"replica on port {cfg.port}, feedback store {services._store.path}", flush=True)
    launch(services)


if __name__ == "__main__":
    main()
