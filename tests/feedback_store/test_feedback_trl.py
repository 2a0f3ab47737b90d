"""The exported files train as they are: one TRL RewardTrainer step and one SFTTrainer step on a tiny Llama.

This is where the `meta` column was decided: both trainers accept the exported rows, including the
extra `meta` column, without any renaming (the test trains on the files exactly as written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from feedback_store.export import export_snapshot
from feedback_store.store import FeedbackStore
from tests.feedback_store.feedback_history import History

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]


@pytest.fixture
def backend() -> str:
    """SQLite only: the export is byte-identical on PostgreSQL (test_feedback_export's golden files)."""
    return "sqlite"


def _texts(out: Path) -> list[str]:
    texts = []
    for path in out.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for key in ("prompt", "chosen", "rejected", "messages"):
                texts += [m["content"] for m in row.get(key, [])]
    return texts


def _tokenizer(texts: list[str]):
    """A word-level tokenizer trained on the exported texts, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts + ["user assistant system"], trainers.WordLevelTrainer(special_tokens=SPECIAL)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        unk_token="[UNK]",
    )
    fast.chat_template = CHATML
    return fast


def _config(tok, **extra: object):
    from model_store.loading import tiny_llama_config

    return tiny_llama_config(tok, max_position_embeddings=4096, tie_word_embeddings=False, **extra)


@pytest.fixture
def exported(store: FeedbackStore, history: History, tmp_path: Path) -> Path:
    export_snapshot(store, tmp_path / "export", test_fraction=0.0)
    return tmp_path / "export"


def test_reward_trainer_step_on_exported_preferences(exported: Path, tmp_path: Path) -> None:
    import torch
    from datasets import load_dataset
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    tok = _tokenizer(_texts(exported))
    ds = load_dataset("json", data_files=str(exported / "preferences.train.jsonl"), split="train")
    assert "meta" in ds.column_names and len(ds) == 4
    model = LlamaForSequenceClassification(_config(tok, num_labels=1))
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=4,
        max_length=4096,  # RewardTrainer DROPS longer pairs: keep every exported pair
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert len(trainer.train_dataset) == 4  # nothing dropped by max_length
    before = model.score.weight.detach().clone()
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)
    assert not torch.equal(before, model.score.weight.detach())


def test_sft_trainer_step_on_exported_demonstrations(exported: Path, tmp_path: Path) -> None:
    import torch
    from datasets import load_dataset
    from transformers import LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = _tokenizer(_texts(exported))
    ds = load_dataset("json", data_files=str(exported / "sft.train.jsonl"), split="train")
    assert "meta" in ds.column_names and len(ds) == 1  # the correction (thumbs-ups are unpaired rows)
    model = LlamaForCausalLM(_config(tok))
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_train_batch_size=1,
        max_length=4096,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    assert len(trainer.train_dataset) == 1
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert math.isfinite(result.training_loss)
