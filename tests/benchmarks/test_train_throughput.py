"""benchmarks/train_throughput.py: TRL's rows as configured (no training runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.train_throughput import build_trainer, ours_row, summarise
from training.layer_compile import cpp_compiler


def _bound(start_rate: float) -> dict:
    """A compute bound of 200 tokens/s for SFT and RM at `start_rate` GFLOP/s (fp32)."""
    return {
        "sft_bound_tokens_per_s": 200.0,
        "rm_bound_tokens_per_s": 200.0,
        "matmul_gflops": {"float32": start_rate},
        "dtype": "float32",
    }


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
    bound = _bound(100.0)
    summary = summarise(rows, bound)
    assert summary["sft_speedup_vs_trl"] == 9.0 and summary["sft_speedup_vs_trl_fp32"] == 2.0
    assert summary["rm_speedup_vs_trl_fp32"] is None and summary["sft_fraction_of_bound"] == 0.9


def test_the_fraction_of_bound_uses_the_rate_measured_beside_the_row() -> None:
    bound = _bound(160.0)
    # The host ran matmuls at 120 GFLOP/s beside the row: the row's bound is 150 tokens/s, not 200
    rows = {"sft-ours": {"tokens_per_s": 120.0, "peak_rss_gb": 1.0, "matmul_gflops_beside": 120.0}}
    summary = summarise(rows, bound)
    assert summary["sft_fraction_of_bound_at_start"] == 0.6
    assert summary["sft_fraction_of_bound"] == 0.8


@pytest.mark.parametrize(
    ("row", "compile_mode", "min_steps"),
    [
        ("sft-ours", "auto", 0),
        ("sft-ours-eager", "false", 20),
        ("rm-ours", "auto", 0),
        ("rm-ours-eager", "false", 20),
        ("sft-ours-sdpa", "auto", 0),
    ],
)
def test_our_rows_compile_as_a_long_retrain_stage_does_and_the_eager_rows_do_not(
    row: str, compile_mode: str, min_steps: int, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    trainer = build_trainer(row, _spec(tiny_llama_dir), tmp_path)
    stage = "sft" if row.startswith("sft") else "rm"
    assert ours_row(row) == (stage, row.removeprefix(f"{stage}-ours"))
    choice = trainer.compile_choice
    if compile_mode == "false":
        assert not choice["compiled"] and choice["reason"] == "model.compile=false"
    else:
        # the 1-step benchmark is below compile_min_steps: the rows lift it so auto decides as for a long stage
        assert choice["reason"].startswith("auto") and "compile_min_steps" not in choice["reason"]
        from model_store.hardware import read_cpuinfo

        # training/layer_compile.py's rules: fp32 without AVX-512 (the AVX2-only CPU), bf16 without AMX (the Zen 4)
        flags = read_cpuinfo().flags
        bf16 = bool(trainer.args.bf16)
        eligible = ("amx_bf16" not in flags) if bf16 else ("avx512f" not in flags)
        assert choice["compiled"] is (cpp_compiler() is not None and eligible)
    # the attention as a retrain stage chooses it (training/block_attention.py), recorded beside the compile;
    # the -sdpa rows keep SDPA to measure what the blocks gain
    attention = trainer.attention_choice
    if row.endswith("-sdpa"):
        assert attention == {"attention": "sdpa", "reason": "model.attention=sdpa"}
    else:
        assert attention["reason"].startswith("auto")


def test_a_variant_rows_own_setting_wins_over_ours_set(tiny_llama_dir: Path) -> None:
    from benchmarks.train_throughput import _ours_config

    spec = {**_spec(tiny_llama_dir), "ours_set": ["model.compile=true", "model.attention=blocks"]}
    assert _ours_config("sft", spec, "").model.compile == "true"
    assert (
        _ours_config("sft", spec, "-eager").model.compile == "false"
    )  # was "true": an A/B of compiled vs compiled
    assert _ours_config("rm", spec, "-sdpa").model.attention == "sdpa"
    assert _ours_config("rm", spec, "").model.attention == "blocks"


def test_summary_reports_what_the_compile_gained() -> None:
    rows = {
        name: {"tokens_per_s": tps, "peak_rss_gb": 1.0}
        for name, tps in {"sft-ours": 170.0, "sft-ours-eager": 136.0}.items()
    }
    bound = _bound(100.0)
    summary = summarise(rows, bound)
    assert summary["sft_compile_speedup"] == 1.25 and summary["rm_compile_speedup"] is None


def test_the_fraction_of_bound_is_the_median_of_each_runs_own_fraction() -> None:
    bound = _bound(100.0)
    # three runs, each beside its own matmul rate: fractions 0.5, 0.6, 0.8
    row = {
        "tokens_per_s": 100.0,
        "peak_rss_gb": 1.0,
        "matmul_gflops_beside": 100.0,
        "tokens_per_s_runs": [100.0, 120.0, 80.0],
        "matmul_gflops_beside_runs": [100.0, 100.0, 50.0],
    }
    summary = summarise({"sft-ours": row}, bound)
    assert summary["sft_fraction_of_bound_runs"] == [0.5, 0.6, 0.8]
    assert summary["sft_fraction_of_bound"] == 0.6  # not the median run's 100 / 200 = 0.5
