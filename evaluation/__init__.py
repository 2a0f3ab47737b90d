"""Offline evaluation: `ragqa eval`, `eval-rm`, `compare`, the feedback simulator, and the one SQuAD metric."""
