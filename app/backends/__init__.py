"""Generator backends: transformers (reference), llamacpp (fast CPU), openai (any OpenAI-compatible server)."""
