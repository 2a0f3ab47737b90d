"""benchmarks/gguf_types.py's prompt building on a hand-made squad file (no model runs here)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.gguf_types import four_passage_prompts, quality_items


class TextTokenizer:
    """Encodes the user turn as its characters' code points, so a test can read the prompt back."""

    def apply_chat_template(self, messages, **_kwargs):
        return [ord(c) for c in messages[-1]["content"]]


def _squad(tmp_path: Path) -> Path:
    def paragraph(i: int, answerable: bool) -> dict:
        answers = [{"text": f"answer{i}", "answer_start": 0}] if answerable else []
        return {
            "context": f"context number {i}.",
            "qas": [{"question": f"question {i}?", "answers": answers}],
        }

    data = {
        "data": [
            {"title": f"T{a}", "paragraphs": [paragraph(a * 10 + i, i % 2 == 0) for i in range(5)]}
            for a in range(4)
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_quality_items_put_the_gold_paragraph_first_with_its_answers(tmp_path: Path) -> None:
    items = quality_items(_squad(tmp_path), TextTokenizer(), 6, seed=0)
    assert len(items) == 6
    for ids, golds in items:
        text = "".join(map(chr, ids))
        number = golds[0].removeprefix("answer")
        assert golds == [f"answer{number}"]  # answerable questions only
        assert f"question {number}?" in text
        assert text.count("context number") == 4  # 4 passages
        assert text.index("context number") == text.index(f"context number {number}.")  # the gold one first


def test_prompts_are_reproducible_and_differ_by_seed(tmp_path: Path) -> None:
    squad = _squad(tmp_path)
    assert four_passage_prompts(squad, TextTokenizer(), 5, seed=1) == four_passage_prompts(
        squad, TextTokenizer(), 5, seed=1
    )
    assert four_passage_prompts(squad, TextTokenizer(), 5, seed=1) != four_passage_prompts(
        squad, TextTokenizer(), 5, seed=2
    )


def test_quantized_types_are_made_by_llama_cpp_from_the_f16_file(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """q4_0 is not a converter type: the benchmark makes it from the f16 GGUF, and the file really is q4_0."""
    import shutil

    from gguf import GGMLQuantizationType, GGUFReader

    from benchmarks.gguf_types import make_gguf
    from tests.conftest import llama_cpp_or_skip

    llama_cpp_or_skip()
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    out = make_gguf(folder, "q4_0", threads=1)
    assert out.name == "model.q4_0.gguf" and (folder / "model.f16.gguf").is_file()
    types = {t.tensor_type for t in GGUFReader(str(out)).tensors}
    assert GGMLQuantizationType.Q4_0 in types and GGMLQuantizationType.F16 not in types
    assert out.stat().st_size < (folder / "model.f16.gguf").stat().st_size


def test_batched_steps_time_every_size_over_shared_prompt_cells(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """One decode step per size of parallel sequences, each row at its own position after the shared prompt."""
    import shutil

    import llama_cpp

    from app.backends.llamacpp_lm import llama_options
    from benchmarks.gguf_types import batched_step_ms, make_gguf
    from tests.conftest import llama_cpp_or_skip

    llama_cpp_or_skip()
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    llm = llama_cpp.Llama(model_path=str(make_gguf(folder, "f16", threads=1)), **llama_options(1, 256))
    try:
        steps = batched_step_ms(llm, list(range(5, 40)), [1, 2, 4], steps=3)
        assert list(steps) == ["1", "2", "4"] and all(ms > 0 for ms in steps.values())
        assert llama_cpp.llama_n_seq_max(llm.ctx) == 4  # the app's multi-sequence context
        # every size left the cache as the bare prompt: 35 cells in sequence 0, none beyond it
        memory = llama_cpp.llama_get_memory(llm.ctx)
        assert llama_cpp.llama_memory_seq_pos_max(memory, 0) == 34
        assert llama_cpp.llama_memory_seq_pos_max(memory, 3) == 34
    finally:
        llm.close()
