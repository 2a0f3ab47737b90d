"""Compile the model's decoder layers (regional torch.compile) for training on the CPU, when it pays.

Why: on the CPU a LoRA training step spends ~10% of its time in element-wise chains (RMSNorm, SiLU x up, rotary,
residual adds) plus the allocations and autograd bookkeeping around each; inductor fuses them into generated C++
loops and saves fewer activations for the backward (peak memory fell from 3.3 to 2.4 GB in the benchmark).
Measured on a 2-core AMD EPYC (AVX2 only), SmolLM2-135M + LoRA r16 on all linear layers, micro-batches of
2 x ~415 tokens, compiled and eager steps interleaved in one process: 170 vs 148 tokens/s (median of 8 each,
+14%); benchmarks/train_throughput.py's SFT rows, 3 alternating repeats: 174.9 vs 142.7 (1.23x).

Why per layer ("regional") and not the whole model: the decoder layers are one class, and torch.compile treats
their parameters as inputs, so ONE compiled graph serves all of them. Compiling the whole model took 11 minutes on
that CPU (3.9 minutes with a warm cache) before the first step; one layer took 84 s cold and 31 s with inductor's
on-disk cache warm (the first step, which includes the compile). That cost is why `auto` compiles only stages long
enough to win it back (`model.compile_min_steps`).

`auto` compiles only where it was measured to help and nothing is known to break:
- a CPU without AVX-512 training in fp32 (on a 2-core AMD Zen 4 with AVX-512 the same regional compile gave no
  gain on the fp32 step, 12.0-14.7 vs 12.4-15.3 s);
- a CPU without AMX training in bf16, where the stage trains with the query-block attention
  (training/block_attention.py), called outside the compiled graph. On the Zen 4 (avx512_bf16), 8 steps of the
  benchmark's SFT and RM rows, two alternating runs each: SFT 26.1-26.8 s compiled vs 28.2-28.4 s eager (-6%), RM
  27.2-27.9 vs 30.0-30.3 s (-8%); the first step 11 s with inductor's cache warm (31 s cold) against 4.5 s. (With
  SDPA inside the graph, earlier, compiled bf16 layers ran no faster than eager ones with the blocks.)
- and then only with a C++ compiler for inductor, one process, no gradient checkpointing (the checkpoint wrapper
  around a compiled layer is untested here), no 4-bit base.
Only SFT and the reward model use it (measured); DPO and KTO stay eager (their reference passes with adapters off
would be more graphs to compile, unmeasured). An error while Dynamo compiles a layer falls back to eager for it
(`suppress_errors`, on while the stage trains); the held-out evaluation after training runs eager (a no-grad graph
would be one more compile for 64 examples).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from typing import Any

_suppress_before: bool | None = None  # Dynamo's suppress_errors before compile_layers turned it on


@dataclass(frozen=True)
class CompileChoice:
    """Whether a stage's decoder layers are compiled, and why (recorded in the stage's metrics)."""

    compiled: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "reason": self.reason}


def cpp_compiler() -> str | None:
    """The C++ compiler inductor will call for CPU kernels (its default: $CXX, else g++), if it is installed."""
    return shutil.which(os.environ.get("CXX", "g++"))


def planned_steps(args: Any, train_rows: int) -> int:
    """Optimizer steps a transformers Trainer will run: `max_steps`, else epochs x batches per epoch."""
    if args.max_steps > 0:
        return int(args.max_steps)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    return math.ceil(math.ceil(train_rows / per_step) * args.num_train_epochs)


def choose(
    mode: str,
    *,
    device: str,
    steps: int,
    min_steps: int,
    processes: int = 1,
    gradient_checkpointing: bool = False,
    four_bit: bool = False,
    bf16: bool = False,
    avx512: bool = False,
    amx: bool = False,
    compiler: str | None = None,
) -> CompileChoice:
    """The decision for one stage; `compiler` is inductor's C++ compiler (None = not installed)."""
    if mode == "false":
        return CompileChoice(False, "model.compile=false")
    if mode == "true":
        return CompileChoice(True, "model.compile=true")
    blockers = [
        (device != "cpu", f"device {device}: measured on the CPU only"),
        # bf16 without AMX: measured on the Zen 4 with the query-block attention (training/block_attention.py, the
        # `auto` attention there) running outside the compiled graph. With AMX neither is measured.
        (bf16 and amx, "bf16 on an AMX CPU: unmeasured there"),
        # Zen 4, fp32 step: 12.0-14.7 s compiled vs 12.4-15.3 s eager
        (avx512 and not bf16, "fp32 on an AVX-512 CPU: no gain measured there"),
        (compiler is None, "no C++ compiler for inductor (install g++ or set CXX)"),
        (processes > 1, f"{processes} processes"),
        (gradient_checkpointing, "gradient checkpointing is on"),
        (four_bit, "4-bit base"),
        (
            steps < min_steps,
            f"{steps} steps < model.compile_min_steps={min_steps}: the compile would not pay",
        ),
    ]
    for blocked, why in blockers:
        if blocked:
            return CompileChoice(False, f"auto: off ({why})")
    where = "bf16 on a CPU without AMX" if bf16 else "CPU without AVX-512, fp32"
    return CompileChoice(True, f"auto: on ({where}, {steps} steps, {compiler})")


def decoder_layers(model: Any) -> list[Any]:
    """The repeated decoder blocks of a (PEFT-wrapped) transformers model: the first ModuleList of >1 modules of
    one class, e.g. LlamaModel.layers."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            kinds = {type(layer) for layer in module}
            if len(kinds) == 1:
                return list(module)
    return []


def compile_layers(model: Any) -> int:
    """Compile each decoder layer in place (lazily: the work happens at the first forward). Returns how many.
    Until `uncompile_layers`, an error while compiling falls back to eager instead of stopping the training."""
    import torch._dynamo

    global _suppress_before
    if _suppress_before is None:
        _suppress_before = torch._dynamo.config.suppress_errors
    torch._dynamo.config.suppress_errors = True
    layers = decoder_layers(model)
    for layer in layers:
        # dynamic: every batch has another sequence length; without it each new length recompiles
        layer.compile(dynamic=True)
    return len(layers)


def uncompile_layers(model: Any) -> None:
    """Back to eager layers (what nn.Module.compile set is unset) and Dynamo's error setting as it was."""
    import torch._dynamo

    global _suppress_before
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None
    if _suppress_before is not None:
        torch._dynamo.config.suppress_errors = _suppress_before
        _suppress_before = None


def compile_if_chosen(trainer: Any, choice: CompileChoice) -> CompileChoice:
    """Compile the trainer's model's layers when `choice` says so. -> the choice in effect."""
    if choice.compiled and not compile_layers(trainer.model):
        return CompileChoice(False, f"{choice.reason}; but no repeated decoder layers found: not compiled")
    return choice


def choice_for_trainer(trainer: Any, mode: str, min_steps: int) -> CompileChoice:
    """The decision for a transformers/TRL trainer about to train (nothing compiled yet)."""
    from model_store.hardware import read_cpuinfo
    from training.config import trainer_device

    args = trainer.args
    model = trainer.model
    device = trainer_device(args)
    flags = read_cpuinfo().flags
    rows = len(trainer.train_dataset) if trainer.train_dataset is not None else 0
    return choose(
        mode,
        device=device,
        steps=planned_steps(args, rows),
        min_steps=min_steps,
        processes=trainer.accelerator.num_processes,
        gradient_checkpointing=bool(args.activation_checkpointing),
        four_bit=bool(getattr(model, "is_loaded_in_4bit", False)),
        bf16=bool(args.bf16),
        avx512="avx512f" in flags,
        amx="amx_bf16" in flags,
        compiler=cpp_compiler(),
    )
