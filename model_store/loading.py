"""The only place that loads models: causal LMs, sequence classifiers, tokenizers, quantisation.

Heavy imports (torch, transformers) stay inside the functions: the app imports this module lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_store.errors import ModelStoreError


class ModelLoadError(ModelStoreError):
    """A model could not be found or loaded; the message says what to do."""


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {e}") from e


def pick_dtype(requested: str) -> Any:
    """The torch dtype for "auto" | "float32" | "bfloat16": model_store.hardware.choose_dtype's rule (bf16 only
    on CUDA with bf16 or a CPU with amx_bf16 / avx512_bf16).

    Measured with SmolLM2-135M on this project's 2-core machines (all under load from parallel jobs, so noisy):
    - AMD EPYC Zen 4 (avx512_bf16, no AMX): a 900-token prefill took 1.04 s in bf16 vs 1.85 s in fp32; time to
      first token in the app (4 passages, ~780 prompt tokens) p50 3.5 s bf16 vs 4.7 s fp32. Decode per CPU-second
      at one thread was a tie (15.8 vs 16.5 tok/s); wall-clock decode under load went both ways in two runs.
    - Sapphire Rapids (AMX): batched forwards 3.6x faster in bf16 (one forward of 4x256 tokens 0.35 s vs 1.26 s
      fp32), single-stream decode 25 vs 27 tok/s.
    Prefill dominates a RAG answer's wait (long prompt, short answer), so bf16 wins where the CPU has native bf16;
    without it bf16 is emulated and much slower. `dtype: float32` in config.yaml overrides.
    """
    from model_store.hardware import choose_dtype

    return choose_dtype(requested).torch_dtype()


def _cuda_dtype() -> Any:
    from model_store.hardware import choose_dtype

    return choose_dtype("auto", device="cuda").torch_dtype()


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
        kwargs["quantization_config"] = qlora_bnb_config()
        kwargs["device_map"] = {"": 0}
    if dtype is None:
        # CPU: fp32 weights (training autocasts to bf16 where model_store.hardware allows); CUDA: the GPU's choice
        dtype = _cuda_dtype() if device == "cuda" else torch.float32
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
        # CPU: fp32 weights (training autocasts to bf16 where model_store.hardware allows); CUDA: the GPU's choice
        dtype = _cuda_dtype() if device == "cuda" else torch.float32
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
