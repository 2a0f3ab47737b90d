"""How many tokens a prompt may take on the hardware that serves it (`max_prompt_tokens: auto`).

On a CPU the first token waits for the prefill of the whole prompt, and that prefill is compute-bound. Measured
with llama.cpp and the default model (SmolLM2-135M, f16 GGUF, 2 threads) on a 2-core AMD EPYC with AVX2 only:
~410 prompt tokens/s (a fresh context), the ~83-token system prompt's KV cache reused between questions, so the
default 4 passages (~880-token prompts on the bundled guide) gave a first token at 1.6-2.2 s; at most 448 tokens
brings it under 1 s there. On a Zen 4 with AVX-512 (bf16 GGUF) the same ~880 tokens took 1.0-1.2 s (~750
tokens/s): 704 tokens leaves the same margin.
A GPU or a remote (OpenAI-compatible) server prefills thousands of tokens per second: no limit.
Above the limit the passages are trimmed to the sentences that bear on the question (retrieval/passage_trim.py);
what that costs in answers is measured by benchmarks/passages_k.py (README, "Serving").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from model_store.hardware import CpuInfo, read_cpuinfo

# Below this a prompt holds little more than the system prompt and the question: a typo, not a setting.
MIN_PROMPT_TOKENS = 256
AVX2_PROMPT_TOKENS = 448
AVX512_PROMPT_TOKENS = 704


def parse_prompt_limit(value: Any) -> str:
    """`auto`, `off` or a whole number >= MIN_PROMPT_TOKENS, as the string the config keeps."""
    if value is None:  # `max_prompt_tokens:` left empty: a slip, as for every other key (not a silent "off")
        raise ValueError("must be auto, off or a number of tokens, got nothing")
    if value is False or str(value).strip().lower() in ("off", "false", "none", "0"):
        return "off"  # YAML 1.1 reads an unquoted `off` as false
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    # ASCII digits only: str.isdigit() also takes "²" or Arabic-Indic digits, which int() then refuses or reads
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise ValueError(f"must be auto, off or a number of tokens, got {value!r}")
    if int(text) < MIN_PROMPT_TOKENS:
        raise ValueError(f"must be at least {MIN_PROMPT_TOKENS} tokens (or off), got {value!r}")
    return text


def serves_on_cpu(backend: str, cuda: bool) -> bool:
    """Whether `backend` (resolved: not `auto`) computes on this machine's CPU, as the loaded model's
    `ServedModel.on_cpu` will say: an openai server prefills elsewhere, llama.cpp (built here for the CPU) on the
    CPU even beside a GPU, transformers on CUDA when there is one. For `ragqa doctor` and `ragqa eval`, which
    report the limit without loading the model."""
    if backend == "openai":
        return False
    if backend == "llamacpp":
        return True
    return not cuda


def auto_prompt_tokens(on_cpu: bool, cpu: CpuInfo | None = None) -> int | None:
    """The limit `auto` gives: None (none) off the CPU, else by the CPU's widest vector instructions."""
    if not on_cpu:
        return None
    cpu = cpu if cpu is not None else _this_cpu()
    return AVX512_PROMPT_TOKENS if "avx512f" in cpu.flags else AVX2_PROMPT_TOKENS


def prompt_token_limit(setting: str, on_cpu: bool, cpu: CpuInfo | None = None) -> int | None:
    """The limit for a `max_prompt_tokens` setting (already parsed) and the serving hardware; None = none."""
    if setting == "off":
        return None
    if setting == "auto":
        return auto_prompt_tokens(on_cpu, cpu)
    return int(setting)


def describe(setting: str, on_cpu: bool, cpu: CpuInfo | None = None) -> dict[str, Any]:
    """What `ragqa doctor` reports: the limit and why."""
    limit = prompt_token_limit(setting, on_cpu, cpu)
    if setting != "auto":
        reason = f"max_prompt_tokens: {setting} in config.yaml"
    elif limit is None:
        reason = "served off the CPU: prefill is fast"
    else:
        widest = "AVX-512" if limit == AVX512_PROMPT_TOKENS else "no AVX-512"
        reason = f"CPU with {widest}: keeps the first token near 1 s"
    return {"max_prompt_tokens": limit, "reason": reason}


@lru_cache(maxsize=1)
def _this_cpu() -> CpuInfo:  # asked before every answer: /proc/cpuinfo is read once
    return read_cpuinfo()
