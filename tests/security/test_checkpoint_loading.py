"""PPO resume loads checkpoints with weights_only=True: real state round-trips, a planted pickle never runs."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from training.ppo.trainer import load_tensors, restore_rng


class _Planted:
    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(_Planted.marker),))

    marker = ""


def test_rng_and_optimizer_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    random.seed(7)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp_path / "rng_rank0.pt")
    expected = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    restore_rng(tmp_path / "rng_rank0.pt")
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param])
    param.sum().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    loaded = load_tensors(tmp_path / "optimizer.pt")
    assert torch.equal(loaded["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("name", ["rng_rank0.pt", "trainable.pt", "optimizer.pt"])
def test_a_planted_pickle_does_not_run(tmp_path: Path, name: str) -> None:
    _Planted.marker = str(tmp_path / "pwned")
    torch.save({"torch": torch.get_rng_state(), "python": _Planted()}, tmp_path / name, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        (restore_rng if name.startswith("rng") else load_tensors)(tmp_path / name)
    assert not (tmp_path / "pwned").exists()
