"""The published models: registry, loading, the base-model import, GGUF conversion and reward scoring, and the
hardware facts that decide how they run (precision, threads, sharing the CPU with training).

Serving (app), training and evaluation import this package; it imports none of them (only `settings` and
`retrieval.prompt`). Heavy imports (torch, transformers) stay inside functions.
"""
