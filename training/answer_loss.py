"""SFT loss with the LM head applied only at the answer positions: never the [batch, seq, vocab] logits.

Why our own compute_loss (TRL 1.16 SFTTrainer falls short on CPU): its fused LM head
(`trl.trainer.utils.add_fused_lm_head`) scores only the labelled positions on Triton devices; everywhere else it
projects EVERY position through the 49k-vocabulary head (in tiles, so the memory is bounded but not the work) and also
computes the per-token entropy and top-1 accuracy over the full vocabulary for its logged metrics. On an RAG
prompt of ~450 tokens with a ~30-token answer that is ~15x more head work than the loss needs: the head alone is
about a quarter of the step's FLOPs there. Here the decoder body runs once, the hidden states are gathered at the
positions whose next token is labelled, and only those rows go through the head, in chunks recomputed in the
backward pass (the chunk's logits are never kept).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.helpers import disable_input_dtype_casting
from torch import Tensor
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from trl import SFTTrainer

from training.causal_mask import without_redundant_mask

IGNORE_INDEX = -100
# Label rows per head chunk: 1024 x 49k fp32 logits is ~200 MB, the most one chunk holds at a time.
HEAD_CHUNK_ROWS = 1024
BODY_KEYS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds")


def decoder_body(model: Any) -> Any:
    """The transformer body (embeddings + layers + final norm) of a causal LM, a peft wrapper or not."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(causal_lm, causal_lm.base_model_prefix)


def answer_positions(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The hidden states that predict a labelled token, and those tokens. [B, T, H], [B, T] -> [N, H], [N]."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return hidden[:, :-1][keep], targets[keep]


def _chunk_nll_sum(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def answer_nll_sum(hidden: Tensor, head: torch.nn.Module, targets: Tensor) -> Tensor:
    """Summed next-token NLL of `targets` [N] from `hidden` [N, H] through the LM head, chunk by chunk."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], HEAD_CHUNK_ROWS):
        rows = slice(start, start + HEAD_CHUNK_ROWS)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_nll_sum, head, hidden[rows], targets[rows], use_reentrant=False)
        else:
            total = total + _chunk_nll_sum(head, hidden[rows], targets[rows])
    return total


def answer_only_loss(
    model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> tuple[Tensor, Tensor]:
    """(loss, number of labelled tokens): mean NLL over the answer tokens, as TRL's SFTTrainer defines it
    (divided by `num_items_in_batch` when the Trainer counts tokens over the accumulated micro-batches)."""
    # right-padded batches (TRL's collator) need no padding mask: SDPA then runs causal (training/causal_mask.py)
    body_inputs = without_redundant_mask({k: v for k, v in inputs.items() if k in BODY_KEYS})
    hidden = decoder_body(model)(**body_inputs, use_cache=False).last_hidden_state
    hidden, targets = answer_positions(hidden, inputs["labels"])
    nll = answer_nll_sum(hidden, model.get_output_embeddings(), targets)
    count = torch.tensor(targets.numel(), device=nll.device)
    denominator = count if num_items_in_batch is None else num_items_in_batch
    # clamped: a micro-batch without answer tokens gives a differentiable zero, not 0/0
    return nll / torch.as_tensor(denominator, device=nll.device).clamp(min=1), count


class AnswerOnlySFTTrainer(SFTTrainer):
    """SFTTrainer whose loss computes logits only at the answer (completion) tokens, and logs no full-vocabulary
    metrics (TRL's entropy and mean_token_accuracy); the loss value is the one SFTTrainer computes."""

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        # Under mixed precision PEFT's cast of each LoRA input to the adapter's fp32 weights only makes a copy that
        # autocast casts straight back to bf16 (two copies of every adapted layer's input; 1.066 vs 1.129 s per
        # micro-step on the Zen 4); without the cast the values reaching the matmuls are the same bf16 ones. Off for
        # the whole step, backward included: gradient checkpointing recomputes the forward there, and a LoRA
        # dropout recomputed with the cast on would save an fp32 mask where the forward saved a bf16 one (torch's
        # checkpoint refuses that).
        casts_off = self.accelerator.mixed_precision != "no"
        with disable_input_dtype_casting(model, active=casts_off):
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if return_outputs or isinstance(model, torch.nn.parallel.DistributedDataParallel):
            # return_outputs: logits for compute_metrics (the eval loop asks only for the loss here).
            # DDP: the gradient all-reduce is armed by the wrapper's own forward; calling the decoder body inside
            # it would skip that, so multi-process training takes the stock (full-logits) loss.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        # The decoder body is called directly, not through the model's forward that accelerate wrapped in the
        # mixed-precision autocast, so the autocast is entered here: without it "bf16" SFT ran every matmul in fp32
        # (measured on Zen 4: 9.7 ms for a 1016x576x1536 matmul, the fp32 rate, against 4.5 ms in bf16).
        with self.accelerator.autocast():
            loss, _ = answer_only_loss(model, inputs, num_items_in_batch)
        # As SFTTrainer: num_items_in_batch counts the tokens of every rank and DDP averages the gradients
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if mode == "train" and "attention_mask" in inputs:
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
