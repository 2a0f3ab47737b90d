"""What every package may import: the state-root paths (stdlib only) and the one config loader.

Imports nothing of the project, so app, retrieval, feedback_store, model_store, training and evaluation can all
depend on it without a cycle.
"""
