"""Length-grouped batches for TRL's RewardTrainer, whose tokenised pairs have no `input_ids` column.

transformers' LengthGroupedSampler infers lengths from `input_ids` only, and the Trainer removes every column but
RewardTrainer's signature ones (chosen_ids, rejected_ids, margin) before building the sampler, so a `length`
column would not survive either: the sampler gets the pair lengths here instead. A pair costs the longer of its
two sequences (both are padded to the batch's longest).
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import RewardTrainer


def pair_token_lengths(dataset: Any) -> list[int]:
    """Per tokenised pair, the longer of its chosen and rejected sequences, in tokens."""
    return [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"], strict=True)]


class LengthGroupedRewardTrainer(RewardTrainer):
    """RewardTrainer whose `train_sampling_strategy="group_by_length"` groups pairs of similar length."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=pair_token_lengths(dataset),
        )
