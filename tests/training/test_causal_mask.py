"""Right-padded training batches run without their padding mask (SDPA causal): same outputs where anything reads
them, a left-padded batch keeps its mask, and the reward trainer's model drops it on its own."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.conftest import write_export
from tests.training.test_answer_loss import tiny_llama
from training.causal_mask import is_right_padded, skip_redundant_causal_mask, without_redundant_mask
from training.data import load_export


def padded(lengths: list[int], total: int, side: str = "right") -> torch.Tensor:
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, :n] = 1
        else:
            mask[row, total - n :] = 1
    return mask


def test_right_padding_is_recognised() -> None:
    assert is_right_padded(padded([5, 3, 5], 5))
    assert is_right_padded(padded([4, 4], 4))  # no padding at all
    assert not is_right_padded(padded([5, 3], 5, side="left"))
    holes = padded([5, 5], 5)
    holes[1, 2] = 0  # a pad between real tokens (packed rows): the mask is needed
    assert not is_right_padded(holes)
    assert not is_right_padded(torch.ones(2, 1, 5, 5))  # a 4D mask is left alone


def test_dropping_the_mask_keeps_every_real_position_of_a_right_padded_batch() -> None:
    model = tiny_llama().eval()
    torch.manual_seed(2)
    ids = torch.randint(3, 97, (3, 20))
    mask = padded([20, 13, 7], 20)
    inputs = {"input_ids": ids, "attention_mask": mask}
    dropped = without_redundant_mask(inputs)
    assert "attention_mask" not in dropped
    with torch.no_grad():
        masked = model(**inputs).logits
        causal = model(**dropped).logits
    real = mask.bool()
    torch.testing.assert_close(causal[real], masked[real], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(causal[~real], masked[~real])  # pads do differ: nothing may read them


def test_a_left_padded_batch_keeps_its_mask() -> None:
    inputs = {"input_ids": torch.ones(2, 6, dtype=torch.long), "attention_mask": padded([6, 2], 6, "left")}
    assert without_redundant_mask(inputs) is inputs


def test_the_reward_trainer_scores_right_padded_pairs_without_the_mask(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    from training.reward import build_reward_trainer

    pairs = load_export(write_export(tmp_path / "e", pairs=4)).pairs["train"]
    trainer, _ = build_reward_trainer(tiny_cfg(), tiny_model_dir, pairs, tmp_path / "rm")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert is_right_padded(batch["attention_mask"]) and not bool(batch["attention_mask"].all())
    seen: list[bool] = []
    spy = trainer.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append("attention_mask" in kw), with_kwargs=True
    )
    model = trainer.model.eval()
    with torch.no_grad():
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    spy.remove()
    assert seen == [False]  # the trainer's hook ran first and dropped the mask
    for hook_id in list(model._forward_pre_hooks):
        model._forward_pre_hooks.pop(hook_id)
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(scores, reference, atol=1e-5, rtol=1e-5)


def test_a_hooked_model_still_takes_a_left_padded_mask() -> None:
    model = tiny_llama().eval()
    seen: list[bool] = []
    skip_redundant_causal_mask(model)
    model.register_forward_pre_hook(lambda m, a, kw: seen.append("attention_mask" in kw), with_kwargs=True)
    ids = torch.randint(3, 97, (2, 8))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=padded([8, 3], 8, "left"))
    assert seen == [True]


def test_the_dpo_trainer_runs_its_right_padded_pairs_without_the_mask_and_the_same_loss(
    tiny_model_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    from training.dpo import build_dpo_trainer

    data = load_export(write_export(tmp_path / "e", pairs=4))
    trainer, sizing = build_dpo_trainer(tiny_cfg(), tiny_model_dir, data, tmp_path / "dpo")
    assert sizing["pairs_train"] == len(data.pairs["train"])
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert is_right_padded(batch["attention_mask"]) and not bool(batch["attention_mask"].all())
    seen: list[bool] = []
    spy = trainer.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append("attention_mask" in kw), with_kwargs=True
    )
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    spy.remove()
    assert seen and not any(seen)  # policy and reference forwards both ran causal, without the mask
    for hook_id in list(trainer.model._forward_pre_hooks):
        trainer.model._forward_pre_hooks.pop(hook_id)
    with torch.no_grad():
        reference = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
