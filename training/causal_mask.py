"""Leave out the attention mask of right-padded training batches: the causal mask alone is exact there.

In a right-padded batch every real token comes before every pad token of its row, so the causal mask already hides
the pads from each real token, and the outputs at real positions are the same with or without the padding mask.
What changes is the kernel: given a padding mask, transformers builds a [batch, 1, T, T] mask and SDPA's CPU kernel
computes every block of it; given none, SDPA runs with is_causal and skips the blocks above the diagonal. Measured
on SmolLM2-135M, LoRA SFT, 8 x 508 tokens, bf16, 2 cores: attention was ~4.3 s of a ~20 s step with the mask.
Outputs at pad positions do change (they now attend to earlier pads), which is harmless where nothing reads them:
the SFT loss has no labels there and the reward model pools at the last real token (found from the pad token id,
not from the mask). Left-padded batches (generation, PPO) keep their mask.
"""

from __future__ import annotations

from typing import Any

import torch


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros (no pad before a real token)."""
    if attention_mask.dim() != 2:  # a ready-made 4D mask: leave it alone
        return False
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def without_redundant_mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """`inputs` without its attention mask when the batch is right-padded (else unchanged)."""
    mask = inputs.get("attention_mask")
    if mask is None or not is_right_padded(mask):
        return inputs
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def skip_redundant_causal_mask(model: torch.nn.Module) -> Any:
    """Make `model`'s forward drop the attention mask of right-padded batches (a forward pre-hook); returns the
    hook's handle. For trainers whose loss calls the model itself (TRL's RewardTrainer)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        return args, without_redundant_mask(kwargs)

    return model.register_forward_pre_hook(hook, with_kwargs=True)
