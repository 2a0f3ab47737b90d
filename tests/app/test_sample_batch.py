"""ServedModel.sample_batch: several prompts' candidates in one call.

The transformers backend left-pads the prompts, prefills each once and repeats its KV cache `n` times; the check
that the padding, the positions and the repeated cache are right is that near-greedy sampling (top_p so small that
only the most likely token survives) gives, for every prompt of different lengths, exactly the answer the same
model gives to that prompt alone. Other backends fall back to one `sample` call per prompt with its own seed.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from app.backends.base import Sampled, ServedModel
from app.backends.transformers_lm import TransformersModel
from model_store.registry import ModelRegistry

CONVERSATIONS = [
    [{"role": "user", "content": "Where is the Zorbium Tower?"}],
    [
        {"role": "system", "content": "Answer from the passages. Passages: [1] The tower opened in 1893."},
        {"role": "user", "content": "When did the tower open, and who designed it, if the passage says so?"},
    ],
    [{"role": "user", "content": "Quillbread?"}],
]
NEAR_GREEDY = {"temperature": 1.0, "top_p": 1e-9, "max_new_tokens": 12, "repetition_penalty": 1.1}


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TransformersModel:
    registry = ModelRegistry(tmp_path_factory.mktemp("sample-batch") / "models")
    version = registry.publish_folder(tiny_llama_dir, {"kind": "base"})
    return TransformersModel.load(version, dtype="float32")


def test_batched_rows_equal_each_prompt_sampled_alone(model: TransformersModel) -> None:
    lengths = {len(model.codec.prompt_ids(m)) for m in CONVERSATIONS}
    assert len(lengths) == 3  # the prompts really need padding
    batched = model.sample_batch(CONVERSATIONS, 2, seeds=[5, 6, 7], **NEAR_GREEDY)
    assert [len(rows) for rows in batched] == [2, 2, 2]
    for j, (messages, rows) in enumerate(zip(CONVERSATIONS, batched, strict=True)):
        (alone,) = model.sample(messages, 1, seed=0, **NEAR_GREEDY)
        assert alone.num_tokens > 0
        for i, row in enumerate(rows):
            assert (row.text, row.num_tokens, row.finished) == (alone.text, alone.num_tokens, alone.finished)
            assert row.sampling["sequence_index"] == i and row.sampling["num_return_sequences"] == 2
            assert row.sampling["batch_index"] == j and row.sampling["batch_prompts"] == 3
            assert row.sampling["seed"] == 5  # the batch's seed
            assert row.sampling["top_p"] == 1e-9 and row.sampling["max_new_tokens"] == 12


def test_real_sampling_in_a_batch_gives_n_rows_per_prompt(model: TransformersModel) -> None:
    batched = model.sample_batch(CONVERSATIONS, 4, seeds=[1, 2, 3], max_new_tokens=10)
    assert [len(rows) for rows in batched] == [4, 4, 4]
    texts = [row.text for rows in batched for row in rows]
    assert len(set(texts)) > 1  # sampled, not one answer repeated
    assert all(0 < row.num_tokens <= 10 for rows in batched for row in rows)
    again = model.sample_batch(CONVERSATIONS, 4, seeds=[1, 2, 3], max_new_tokens=10)
    assert [row.text for rows in again for row in rows] == texts  # the batch seed reproduces it
    assert model.sample_batch([], 4, seeds=[]) == []
    with pytest.raises(ValueError, match="one seed per prompt"):
        model.sample_batch(CONVERSATIONS, 2, seeds=[1])


class _OneByOne(ServedModel):
    """A backend without its own batch path: records what `_sample` was asked."""

    backend = "fake"

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(name="v0001", manifest={}), None, 2048)
        self.calls: list[tuple[str, int, float]] = []

    def _stream(self, messages: Any, decoding: Any, stats: Any) -> Any:
        raise NotImplementedError

    def _sample(self, messages: list[dict[str, str]], request: Any) -> list[Sampled]:
        self.calls.append((messages[-1]["content"], request.seed, request.timeout_s))
        return [Sampled(f"{request.seed}-{i}", True, 1, 1.0, request.record(i)) for i in range(request.n)]


def test_other_backends_sample_prompt_after_prompt_with_their_own_seeds() -> None:
    fake = _OneByOne()
    out = fake.sample_batch(CONVERSATIONS, 2, seeds=[10, 20, 30], timeout_s=7.0)
    assert fake.calls == [
        (m[-1]["content"], s, 7.0) for m, s in zip(CONVERSATIONS, [10, 20, 30], strict=True)
    ]
    assert [[r.text for r in rows] for rows in out] == [["10-0", "10-1"], ["20-0", "20-1"], ["30-0", "30-1"]]
    assert "batch_index" not in out[0][0].sampling  # exactly what `sample` records


def test_top_k_is_applied_and_recorded(model: TransformersModel) -> None:
    """top_k=1 leaves only the most likely token, however hot the temperature: every candidate is the greedy
    answer. With top_k off the same temperature gives other answers, so top_k really reached generate."""
    hot = {"temperature": 5.0, "top_p": 1.0, "max_new_tokens": 10, "repetition_penalty": 1.1}
    messages = CONVERSATIONS[0]
    greedy = "".join(model.stream(messages, max_new_tokens=10, repetition_penalty=1.1)).strip()
    rows = model.sample(messages, 3, seed=2, top_k=1, **hot)
    batched = model.sample_batch(CONVERSATIONS[:2], 2, seeds=[2, 3], top_k=1, **hot)[0]
    assert [r.text for r in rows + batched] == [greedy] * 5
    assert all(r.sampling["top_k"] == 1 for r in rows + batched)
    free = model.sample(messages, 3, seed=2, top_k=0, **hot)
    assert any(r.text != greedy for r in free) and free[0].sampling["top_k"] == 0
