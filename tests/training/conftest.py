"""Fixtures for the retrain pipeline: a tiny random Llama with a char-level ChatML tokenizer, a registry
holding it as v0001, and hand-made feedback exports in feedback_store/export.py's format.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retrieval.prompt import render_prompt

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"

FACTS = [
    ("Where is the Eiffel Tower?", "The Eiffel Tower stands in Paris.", "Paris"),
    ("Who wrote Hamlet?", "Hamlet was written by Shakespeare.", "Shakespeare"),
    ("What is water made of?", "Water is hydrogen and oxygen.", "hydrogen and oxygen"),
    ("When did Apollo 11 land?", "Apollo 11 landed in 1969.", "1969"),
    ("What colour is the sky?", "The clear sky looks blue.", "blue"),
    ("How many legs has a spider?", "A spider has eight legs.", "eight"),
    ("What is the capital of Peru?", "Lima is the capital of Peru.", "Lima"),
    ("Which planet is red?", "Mars is called the red planet.", "Mars"),
]


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts with no accelerate state, as each retrain process does.

    accelerate keeps its device in a process-wide singleton: after a test whose trainer ran on the CPU (TRL's
    use_cpu), a later Accelerator() on a CUDA machine silently reuses the CPU device, and PPO's 4-bit test then fed
    CPU token ids to a CUDA model (seen on a lent H200: it passes alone, failed after the CPU tests). accelerate's own
    test case resets the same way.
    """
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def prompt_for(i: int, serving_format: bool = False) -> list[dict[str, str]]:
    """Chat messages for fact i. serving_format=True renders THE prompt (retrieval.prompt: ~450 tokens with
    the char-level tokenizer); the default keeps its shape with a one-line system prompt (~90 tokens), which
    keeps the end-to-end runs fast on 2 shared cores."""
    question, passage, _ = FACTS[i % len(FACTS)]
    suffix = f" (case {i})" if i >= len(FACTS) else ""
    messages = render_prompt(question + suffix, [{"text": passage, "source": "facts.md"}])
    if not serving_format:
        messages[0] = {"role": "system", "content": "Answer from the passage; cite it."}
    return messages


def write_export(
    folder: Path,
    *,
    demos: int = 4,
    pairs: int = 4,
    pairs_test: int = 2,
    prompts: int = 4,
    prompts_test: int = 2,
    serving_format: bool = False,
) -> Path:
    """A feedback export folder: manifest.json + {sft,preferences,prompts}.{train,test}.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)

    def prompt(i: int) -> list[dict[str, str]]:
        return prompt_for(i, serving_format)

    rows: dict[str, list[dict]] = {}

    def answer(i: int) -> str:
        return f"{FACTS[i % len(FACTS)][2]} [1]"

    rows["sft.train.jsonl"] = [
        {
            "messages": [*prompt(i), {"role": "assistant", "content": answer(i)}],
            "meta": {"source": "correction"},
        }
        for i in range(demos)
    ]
    rows["sft.test.jsonl"] = []

    def pair(i: int) -> dict:
        return {
            "prompt": prompt(i),
            "chosen": [{"role": "assistant", "content": answer(i)}],
            "rejected": [{"role": "assistant", "content": "I do not know."}],
            "meta": {"source": "ranking", "margin": 1},
        }

    rows["preferences.train.jsonl"] = [pair(i) for i in range(pairs)]
    rows["preferences.test.jsonl"] = [pair(100 + i) for i in range(pairs_test)]
    rows["prompts.train.jsonl"] = [{"prompt": prompt(i), "question": FACTS[i % 8][0]} for i in range(prompts)]
    rows["prompts.test.jsonl"] = [{"prompt": prompt(100 + i), "question": "q"} for i in range(prompts_test)]
    from feedback_store.export import write_rows_as_export

    return write_rows_as_export(folder, rows)


def random_adapter(
    base: Path, out: Path, seed: int, r: int = 4, targets: str | list[str] = "all-linear"
) -> Path:
    """A LoRA adapter on `base` with non-zero B (as after training), saved with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama (hidden 64, 2 layers, 4 heads) + the char-level ChatML tokenizer of training/ppo/toy.py."""
    import torch
    from transformers import LlamaForCausalLM

    from training.ppo.toy import _llama_config, build_toy_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = build_toy_tokenizer(128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(len(tok)))
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def tiny_registry(ragqa_home: Path, tiny_model_dir: Path) -> Path:
    """RAGQA_HOME/models with the tiny model as v0001 (current). Returns the models folder."""
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(ragqa_home / "models")
    registry.publish(
        lambda out: [shutil.copy2(p, out / p.name) for p in tiny_model_dir.iterdir() if p.is_file()],
        {"kind": "base", "base_model": "tiny-random-llama"},
    )
    return ragqa_home / "models"


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    return write_export(tmp_path / "export")


@pytest.fixture
def tiny_cfg():
    from training.config import load_config

    def make(*overrides: str):
        return load_config(TINY_CONFIG, list(overrides))

    return make


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
