"""One app replica for tests/replicas: `python tests/replicas/replica_app.py PORT`.

The equivalent of `python -m app serve --port PORT` with the hash embedder (no embedding model to load) and the
feedback store named by $RAGQA_FEEDBACK_DSN (shared by every replica); RAGQA_HOME (registry, index) is shared too.
"""

from __future__ import annotations

import sys

from app.config import AppConfig
from app.services import Services
from app.ui import launch
from retrieval.embedder import HashEmbedder


def main() -> None:
    cfg = AppConfig.load(max_new_tokens=8, port=int(sys.argv[1]), host="127.0.0.1")
    services = Services(cfg, embedder=HashEmbedder())
    # Services opens feedback_target(...): $RAGQA_FEEDBACK_DSN, the PostgreSQL store every replica shares.
    print(f"replica on port {cfg.port}, feedback store {services.store.path}", flush=True)
    launch(services)


if __name__ == "__main__":
    main()
