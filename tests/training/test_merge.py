"""Merge: the merged folder reproduces the adapter model's logits, loads without peft, and a mismatch fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import prompt_for, random_adapter, subprocess_env
from training.merge import MergeError, merge_adapter

CONVERSATIONS = [prompt_for(0) + [{"role": "assistant", "content": "Paris [1]"}], prompt_for(1)]


@pytest.fixture
def adapter_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A LoRA adapter with non-zero B matrices (as after training), saved with the tokenizer."""
    return random_adapter(tiny_model_dir, tmp_path / "adapter", seed=1)


def _adapter_logits(base: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    ids = torch.tensor([tok.apply_chat_template(CONVERSATIONS[0], tokenize=True, return_dict=False)])
    with torch.no_grad():
        return model(input_ids=ids).logits, ids


def test_merge_preserves_logits_and_publishes_a_plain_model(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path, ragqa_home: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from model_store.registry import ModelRegistry

    out = tmp_path / "merged"
    result = merge_adapter(tiny_model_dir, adapter_dir, out, check_conversations=CONVERSATIONS, atol=1e-4)
    assert result["checked"] == 2 and result["max_abs_logit_diff"] <= 1e-4
    assert not (out / "adapter_config.json").exists() and not out.with_name("merged.partial").exists()

    expected, ids = _adapter_logits(tiny_model_dir, adapter_dir)
    base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter really changes the model
    merged_logits = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    assert torch.allclose(merged_logits, expected, atol=1e-4)

    version = ModelRegistry(ragqa_home / "models").publish_folder(out, {"kind": "test"})
    # A fresh interpreter where peft cannot be imported loads the published version with transformers alone.
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(version.path)!r})\n"
        "print(type(m).__name__, sum(p.numel() for p in m.parameters()))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "LlamaForCausalLM"


def test_merge_failing_the_logit_check_saves_nothing(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    with pytest.raises(MergeError, match=r"merged model differs from the adapter model"):
        merge_adapter(tiny_model_dir, adapter_dir, out, check_conversations=CONVERSATIONS, atol=1e-12)
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_merge_refuses_a_folder_that_is_not_an_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MergeError, match="not a LoRA adapter folder"):
        merge_adapter(
            tiny_model_dir, tiny_model_dir, tmp_path / "m", check_conversations=CONVERSATIONS, atol=1e-3
        )
