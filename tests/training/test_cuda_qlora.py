"""The CUDA paths: SFT with QLoRA (nf4 base, bf16 compute) trains and merges within the QLoRA tolerance.

The same function runs on CPU in the default suite (LoRA on the fp32 toy model), so the test body itself is
checked on every run; the `gpu` variant runs on a CUDA machine (`pytest -m gpu`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def run_toy_sft(tmp_path: Path, overrides: list[str]):
    from training.config import load_config
    from training.data import ExportData
    from training.ppo.toy import build_toy_models, toy_prompts
    from training.sft import train_sft

    policy, _ = build_toy_models(tmp_path / "toy")
    rows = [
        {"prompt": p, "completion": [{"role": "assistant", "content": f"{i} apples."}]}
        for i, p in enumerate(toy_prompts(16))
    ]
    cfg = load_config(
        Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny.yaml",
        [
            "sft.max_steps=2",
            "sft.batch_size=4",
            "data.min_demonstrations=2",
            "merge.check_prompts=2",
            *overrides,
        ],
    )
    data = ExportData(folder=tmp_path, snapshot_id="toy", manifest={}, sft={"train": rows, "test": []})
    return cfg, train_sft(cfg, model_dir=policy, data=data, out_dir=tmp_path / "sft")


def test_toy_sft_trains_and_merges_on_cpu(tmp_path: Path) -> None:
    cfg, result = run_toy_sft(tmp_path, [])
    assert result.status == "done" and result.metrics["qlora"] is False
    assert result.metrics["merge"]["max_abs_logit_diff"] <= cfg.merge.atol


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bitsandbytes nf4)")
def test_sft_qlora_trains_and_merges_on_cuda(tmp_path: Path) -> None:
    cfg, result = run_toy_sft(tmp_path, ["device=auto", "model.load_in_4bit=auto", "model.bf16=auto"])
    assert result.status == "done" and result.metrics["qlora"] is True
    assert result.metrics["merge"]["max_abs_logit_diff"] <= cfg.merge.qlora_atol
    assert (tmp_path / "sft" / "merged" / "config.json").is_file()
