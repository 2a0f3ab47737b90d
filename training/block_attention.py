"""Causal attention in query blocks, for bf16 training on a CPU without AMX, where it beats SDPA's CPU kernel.

Why: on a 2-core AMD Zen 4 (avx512_bf16, no AMX) with SmolLM2-135M's attention (9 query heads sharing 3 key/value
heads, head size 64), SDPA's flash-attention kernel took 17-18 ms for a forward + backward of 2 x 450 tokens in bf16,
no faster than in fp32, while the bf16 matmuls around it run at ~860 GFLOP/s: attention was a third of an SFT step
(torch.profiler, 8 x 330-512 tokens: 2.1 s of 6.3 s). The same attention written as two batched matmuls per block
of 128 queries (the 3 query heads of a key/value head stacked into one matmul, no repeat_kv copy; keys after the
block's last query skipped, so the causal half is never computed) took 9.6-10.5 ms, 6.5 ms since (see Numerics):
the matmuls run on the CPU's bf16 instructions. In fp32 it was slower than SDPA (22.6 vs 18.0 ms), and at 1,024 tokens the
[queries x keys] blocks no longer stay in cache (48-54 ms either way), hence the limits below.

What it computes is SDPA's causal attention, where q and k have one length (no KV cache: training forwards and a
generation's prefill), in bf16, without dropout, sliding window or soft-capping, for at most MAX_TOKENS tokens:
with no mask (a right-padded training batch, training/causal_mask.py) or with the boolean [batch, 1, T, T] mask
transformers builds for SDPA (left-padded PPO batches: padding and causality in one). A query row whose keys are
all masked (a left pad) gets a finite -1e38 instead of -inf, so it averages instead of turning NaN (SDPA returns
something else there; nothing reads pad positions, and a NaN would reach the gradients through 0 x NaN). Every
other call (decoding with a KV cache, fp32, longer sequences, other masks) goes to transformers' SDPA function
unchanged, and masks are built as for SDPA (the mask function is registered under this name too: transformers
builds NO mask for an attention name it does not know, which would silently drop the padding of left-padded
batches). The masks it takes are causal (the module's `is_causal` is checked; transformers builds a decoder's
masks with `create_causal_mask`): keys after a block's last query are never read.

Numerics: q k^T comes out of a bf16 matmul (fp32 accumulation, rounded to bf16) with the mask added there, and the
softmax runs on those bf16 scores (torch's CPU kernel computes it in fp32 and rounds the probabilities to bf16, as
the matmul with v would anyway); the scale is applied to q (1/8 for head size 64: exact). SDPA's flash kernel keeps
q k^T in fp32. Equal to SDPA within fp32 rounding when run in fp32 (the tests), within bf16 rounding otherwise.
An earlier version cast the scores to fp32 for the scale, the mask and the softmax and back (transformers' eager
attention does that): the same error against an fp32 reference (max 0.0137 at 2 x 450 tokens, both), but five
passes over each [queries x keys] block instead of three, and twice the time (12-13 vs 6.5 ms forward + backward
at 2 x 450 tokens on the Zen 4; 5-6% of a whole SFT step).

`model.attention` (training config): auto = on a CPU training in bf16 without AMX (where it was measured: Zen 4);
off on CUDA (fused kernels), in fp32 (slower) and with AMX (unmeasured) | blocks | sdpa.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

NAME = "causal_blocks"
BLOCK = 128  # queries per block: 128 was faster than 64 or 256 at 200-450 tokens
MAX_TOKENS = 768  # longer: SDPA (equal speed at 1,024 tokens, and the blocks' memory grows with the square)
DTYPES = (torch.bfloat16,)  # where the blocks were measured faster; tests widen it to check the maths in fp32

_MASKED = -1e38  # finite: a fully masked row (a left pad) must not become NaN
# per device: [MAX_TOKENS, MAX_TOKENS], 0 on and below the diagonal, -inf above
_causal_bias: dict[str, torch.Tensor] = {}
# (device, dtype, start, end, group) -> a block's causal mask, newest last (see _block_bias)
_block_biases: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
_BLOCK_BIASES_KEPT = 32


@dataclass(frozen=True)
class AttentionChoice:
    """Which attention a training stage runs, and why (recorded in the stage's metrics and by `ragqa doctor`)."""

    attention: str  # NAME or "sdpa"
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"attention": self.attention, "reason": self.reason}


def choose(mode: str, *, device: str, bf16: bool, amx: bool) -> AttentionChoice:
    """The decision for one stage from the config's `model.attention` and the hardware. Stages whose decoder layers
    are compiled (training/layer_compile.py) keep the blocks too: they run outside the compiled graph (see
    `register`)."""
    if mode == "sdpa":
        return AttentionChoice("sdpa", "model.attention=sdpa")
    if mode == "blocks":
        return AttentionChoice(NAME, "model.attention=blocks (used for bf16 causal batches; others run SDPA)")
    blockers = [
        (device != "cpu", f"device {device}: SDPA's fused kernels"),
        (not bf16, "fp32: SDPA's kernel was faster there (18.0 vs 22.6 ms)"),
        (amx, "an AMX CPU: unmeasured there, SDPA kept"),
    ]
    for blocked, why in blockers:
        if blocked:
            return AttentionChoice("sdpa", f"auto: SDPA ({why})")
    return AttentionChoice(NAME, "auto: query blocks (bf16 on a CPU without AMX: ~2.7x SDPA's attention)")


def register() -> None:
    """Make NAME a transformers attention implementation, with SDPA's masks (idempotent).

    Registered outside torch.compile (`torch.compiler.disable`): in compiled decoder layers the blocks are a graph
    break, the norms, projections and MLP around them are compiled. Traced, the blocks' loop over query blocks would
    specialise the graph on each sequence's block count, and Dynamo's trace of it took 100 s against 30 s (first
    step, Zen 4), for no faster steps."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, torch.compiler.disable(causal_block_attention))
    AttentionMaskInterface.register(NAME, sdpa_mask)


def set_attention(model: Any, choice: AttentionChoice) -> AttentionChoice:
    """Switch `model` (a transformers model, possibly PEFT-wrapped) to the blocks when chosen; "sdpa" leaves the
    model as it was loaded. -> the choice in effect (transformers only warns when a model class cannot switch)."""
    if choice.attention != NAME:
        return choice
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
    if base.config._attn_implementation != NAME:
        return AttentionChoice("sdpa", f"{choice.reason}; but {type(base).__name__} cannot switch: as loaded")
    return choice


def _bias(tokens: int, device: torch.device) -> torch.Tensor:
    """Additive causal mask [tokens, tokens] (a view of one cached tensor per device)."""
    key = f"{device}:{MAX_TOKENS}"
    if key not in _causal_bias:
        upper = torch.ones(MAX_TOKENS, MAX_TOKENS, dtype=torch.bool, device=device).triu(1)
        _causal_bias[key] = torch.zeros(MAX_TOKENS, MAX_TOKENS, device=device).masked_fill(
            upper, float("-inf")
        )
    return _causal_bias[key][:tokens, :tokens]


def blocks_apply(
    module: Any, query: torch.Tensor, key: torch.Tensor, mask: Any, dropout: float, kwargs: dict
) -> bool:
    """True where the blocks compute exactly what SDPA would (see the module docstring)."""
    tokens = query.shape[2]
    return (
        (mask is None or _boolean_square_mask(mask, tokens))
        and query.device.type == "cpu"
        and _computes_in(query.dtype) in DTYPES
        and 1 < tokens <= MAX_TOKENS
        and key.shape[2] == tokens
        and query.shape[1] % key.shape[1] == 0
        and (dropout == 0.0 or not module.training)
        and kwargs.get("is_causal") is not False
        and getattr(module, "is_causal", True)
        and kwargs.get("sliding_window") is None
        and kwargs.get("softcap") is None
        and kwargs.get("position_bias") is None
    )


def _computes_in(dtype: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in: the autocast dtype where CPU autocast is on (the reward model keeps an fp32
    base under bf16 autocast, and rotary embeddings promote its queries back to fp32), else the inputs' own."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return dtype


def _boolean_square_mask(mask: Any, tokens: int) -> bool:
    """SDPA's boolean mask for T queries over T keys, one for all heads: [B, 1, T, T]."""
    return (
        isinstance(mask, torch.Tensor)
        and mask.dtype == torch.bool
        and mask.dim() == 4
        and mask.shape[1] == 1
        and tuple(mask.shape[2:]) == (tokens, tokens)
    )


def _block_bias(
    mask: torch.Tensor | None, start: int, end: int, group: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The additive mask of queries start..end over keys 0..end, each query row repeated for the `group` query heads
    stacked in one matmul: the causal one ([group x rows, end]) or `mask`'s ([B, 1, group x rows, end])."""
    if mask is not None:
        allowed = mask[:, :, start:end, :end].repeat(1, 1, group, 1)
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, _MASKED)
    # A micro-batch's blocks need a handful of these (one per block start), and all its layers share them; the
    # cache keeps the latest few (a causal block is [384 x 768] bf16 at most: 0.6 MB)
    key = (str(device), dtype, start, end, group)
    bias = _block_biases.pop(key, None)
    if bias is None:
        bias = _bias(end, device)[start:end].to(dtype).repeat(group, 1)
    _block_biases[key] = bias
    while len(_block_biases) > _BLOCK_BIASES_KEPT:
        _block_biases.popitem(last=False)
    return bias


def block_causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) v, 128 queries at a time. query [B, H, T, D], key/value [B, KV, T, D]
    (H a multiple of KV, heads grouped as repeat_kv groups them), mask None (causal) or SDPA's boolean [B, 1, T, T]
    (True = attend; causal) -> [B, T, H, D] (transformers' layout).

    Every pass over a [queries x keys] block costs as much as the matmul that made it, so there are three: the
    scores with the mask added in the matmul (baddbmm), the softmax, the matmul with v. The scale goes on q ([T x
    D], not [T x T]; 1/8 for head size 64, exact in any float dtype), the softmax runs in the compute dtype (torch's
    CPU kernel accumulates bf16 in fp32). Against fp32 scores scaled, masked and cast back (5 passes): half the
    time, same result to bf16 rounding (2 x 450 tokens, forward + backward: 13 -> 6.5 ms on a Zen 4)."""
    batch, heads, tokens, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    dtype = _computes_in(query.dtype)
    grouped = (query * scaling).to(dtype).view(batch, kv_heads, group, tokens, dim)
    # [B x KV, T, D]: one copy each of k and v up front, so each block reads a slice of them
    keys = key.to(dtype).reshape(batch * kv_heads, tokens, dim)
    values = value.to(dtype).reshape(batch * kv_heads, tokens, dim)
    out = []
    for start in range(0, tokens, BLOCK):
        end = min(start + BLOCK, tokens)
        rows = end - start
        q = grouped[:, :, :, start:end].reshape(batch * kv_heads, group * rows, dim)
        bias = _block_bias(mask, start, end, group, dtype, query.device)
        if mask is None:
            scores = torch.baddbmm(bias, q, keys[:, :end].transpose(1, 2))
        else:  # one mask per sequence: [B, 1, ...] broadcasts over the key/value heads
            scores = (
                torch.bmm(q, keys[:, :end].transpose(1, 2)).view(batch, kv_heads, group * rows, end) + bias
            )
            scores = scores.view(batch * kv_heads, group * rows, end)
        probs = torch.softmax(scores, dim=-1)
        out.append(torch.bmm(probs, values[:, :end]).view(batch, kv_heads, group, rows, dim))
    return torch.cat(out, dim=3).view(batch, heads, tokens, dim).transpose(1, 2).contiguous()


def causal_block_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: the blocks where they apply, transformers' SDPA function elsewhere."""
    if not blocks_apply(module, query, key, attention_mask, dropout, kwargs):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return block_causal_attention(query, key, value, scale, attention_mask), None


def apply_to_model(model: Any, mode: str, *, device: str, bf16: bool) -> AttentionChoice:
    """Decide on this CPU for a model about to train on `device`, and switch its attention if chosen. -> the
    choice in effect."""
    from model_store.hardware import read_cpuinfo

    amx = "amx_bf16" in read_cpuinfo().flags
    choice = choose(mode, device=device, bf16=bf16, amx=amx)
    return set_attention(model, choice)


def apply_to_trainer(trainer: Any, mode: str) -> AttentionChoice:
    """`apply_to_model` for a transformers/TRL trainer about to train."""
    from training.config import trainer_device

    args = trainer.args
    return apply_to_model(trainer.model, mode, device=trainer_device(args), bf16=bool(args.bf16))
