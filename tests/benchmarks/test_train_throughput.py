"""benchmarks/train_throughput.py: TRL's rows as configured (no training runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.train_throughput import build_trainer, summarise


def _spec(model_dir: Path) -> dict:
    messages = [{"role": "user", "content": "Where is the tower? [1] The tower is in Paris."}]
    answer = [{"role": "assistant", "content": "Paris [1]"}]
    examples = [{"prompt": messages, "completion": answer} for _ in range(4)]
    return {"model_dir": str(model_dir), "examples": examples, "batch": 2, "steps": 1}


@pytest.mark.parametrize(
    ("row", "bf16"), [("sft-trl", True), ("sft-trl-fp32", False), ("rm-trl", True), ("rm-trl-fp32", False)]
)
def test_trl_rows_keep_trls_defaults_except_bf16_in_the_fp32_rows(
    row: str, bf16: bool, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    trainer = build_trainer(row, _spec(tiny_llama_dir), tmp_path)
    assert trainer.args.bf16 is bf16  # TRL's default is bf16 on: emulated (~10x slower) without native bf16
    assert trainer.args.gradient_checkpointing  # TRL's default, kept in both


def test_summary_reports_the_fp32_comparison_beside_the_default_one() -> None:
    rows = {
        name: {"tokens_per_s": tps, "peak_rss_gb": 1.0}
        for name, tps in {"sft-ours": 180.0, "sft-trl": 20.0, "sft-trl-fp32": 90.0}.items()
    }
    bound = {
        "sft_bound_tokens_per_s": 200.0,
        "rm_bound_tokens_per_s": 200.0,
        "matmul_gflops": {"float32": 100.0},
        "dtype": "float32",
    }
    summary = summarise(rows, bound)
    assert summary["sft_speedup_vs_trl"] == 9.0 and summary["sft_speedup_vs_trl_fp32"] == 2.0
    assert summary["rm_speedup_vs_trl_fp32"] is None and summary["sft_fraction_of_bound"] == 0.9


def test_the_fraction_of_bound_uses_the_rate_measured_beside_the_row() -> None:
    bound = {
        "sft_bound_tokens_per_s": 200.0,
        "rm_bound_tokens_per_s": 200.0,
        "matmul_gflops": {"float32": 160.0},
        "dtype": "float32",
    }
    # The host ran matmuls at 120 GFLOP/s beside the row: the row's bound is 150 tokens/s, not 200
    rows = {"sft-ours": {"tokens_per_s": 120.0, "peak_rss_gb": 1.0, "matmul_gflops_beside": 120.0}}
    summary = summarise(rows, bound)
    assert summary["sft_fraction_of_bound_at_start"] == 0.6
    assert summary["sft_fraction_of_bound"] == 0.8
