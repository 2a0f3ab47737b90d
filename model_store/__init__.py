"""The published models: registry, loading, the base-model import, GGUF conversion and reward scoring.

Serving (app), training and evaluation import this package; it imports none of them (only `settings` and
`retrieval.prompt`). Heavy imports (torch, transformers) stay inside functions.
"""
