"""Precision by hardware: one rule (model_store.hardware.choose_dtype) for serving, training and `ragqa doctor`,
checked on faked CPUs (AVX2 only, Zen 4 avx512_bf16, Sapphire Rapids AMX, Skylake AVX-512 without bf16) and a
faked CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store import hardware
from model_store.hardware import CpuInfo, choose_dtype, parse_cpuinfo, parse_precision, usable_cores

AVX2_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
ZEN4 = (
    "model name\t: AMD EPYC 9B14\nflags\t\t: avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni\n"
)
SAPPHIRE = (
    "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: avx avx2 avx512f avx512bw amx_tile amx_bf16\n"
)
SKYLAKE = (
    "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx avx2 fma avx512f avx512bw avx512vl avx512dq\n"
)


@pytest.fixture
def fake_machine(monkeypatch: pytest.MonkeyPatch):
    """Make this process see the given /proc/cpuinfo text and CUDA state (available, bf16)."""

    def fake(cpuinfo: str, cuda: tuple[bool, bool] = (False, False)) -> None:
        monkeypatch.setattr(hardware, "read_cpuinfo", lambda *a, **k: parse_cpuinfo(cpuinfo))
        monkeypatch.setattr(hardware, "cuda_state", lambda: cuda)

    return fake


def test_cpuinfo_gives_the_model_and_the_flags() -> None:
    cpu = parse_cpuinfo(ZEN4 + "processor\t: 1\nmodel name\t: other\nflags\t\t: sse\n")
    assert cpu.model == "AMD EPYC 9B14"
    assert "avx512_bf16" in cpu.flags and "sse" not in cpu.flags  # the first processor's line
    assert cpu.native_bf16 == ("avx512_bf16",)
    assert parse_cpuinfo(AVX2_EPYC).native_bf16 == ()


@pytest.mark.parametrize(
    ("cpuinfo", "dtype"),
    [(AVX2_EPYC, "float32"), (SKYLAKE, "float32"), (ZEN4, "bfloat16"), (SAPPHIRE, "bfloat16")],
)
def test_cpu_gets_bf16_only_with_native_bf16(cpuinfo: str, dtype: str) -> None:
    choice = choose_dtype("auto", device="cpu", cpu=parse_cpuinfo(cpuinfo))
    assert choice.dtype == dtype
    assert ("native bf16" in choice.reason) == (dtype == "bfloat16")


def test_cuda_gets_bf16_when_the_gpu_supports_it() -> None:
    cpu = parse_cpuinfo(AVX2_EPYC)  # the host CPU does not matter on CUDA
    assert choose_dtype("auto", device="cuda", cpu=cpu, cuda_bf16=True).dtype == "bfloat16"
    assert choose_dtype("auto", device="cuda", cpu=cpu, cuda_bf16=False).dtype == "float32"


def test_an_explicit_setting_wins_and_says_when_bf16_is_emulated() -> None:
    amx, avx2 = parse_cpuinfo(SAPPHIRE), parse_cpuinfo(AVX2_EPYC)
    assert choose_dtype("float32", device="cpu", cpu=amx).dtype == "float32"
    forced = choose_dtype(True, device="cpu", cpu=avx2)
    assert forced.dtype == "bfloat16" and "emulated" in forced.reason
    assert choose_dtype(False, device="cpu", cpu=amx).dtype == "float32"


def test_precision_settings_are_parsed_or_refused() -> None:
    assert [parse_precision(v) for v in ("auto", "bf16", True, "False", "fp32")] == [
        "auto",
        "bfloat16",
        "bfloat16",
        "float32",
        "float32",
    ]
    with pytest.raises(hardware.PrecisionError, match="auto, bfloat16 or float32"):
        parse_precision("fp16")


@pytest.mark.parametrize(("cpuinfo", "dtype"), [(AVX2_EPYC, "float32"), (ZEN4, "bfloat16")])
def test_serving_and_every_training_stage_follow_the_cpu(fake_machine, cpuinfo: str, dtype: str) -> None:
    import torch

    from model_store.loading import pick_dtype
    from retrieval.embedder import _cpu_has_fast_bf16
    from training.config import frozen_base_dtype, load_config, train_dtype, trainer_kwargs
    from training.ppo.config import PPOConfig

    fake_machine(cpuinfo)
    assert pick_dtype("auto") == getattr(torch, dtype)  # serving (transformers backend, reward scoring)
    assert _cpu_has_fast_bf16() == (dtype == "bfloat16")  # the embedder
    cfg = load_config()  # the shipped default config: model.bf16 auto
    assert cfg.model.bf16 == "auto"
    assert train_dtype(cfg, "cpu").dtype == dtype
    assert trainer_kwargs(cfg.sft, cfg, "cpu", Path("out"))["bf16"] is (dtype == "bfloat16")  # SFT, RM, DPO
    # the frozen base of SFT/DPO/KTO: bf16 only with native bf16, else the loader's default (fp32 above)
    assert frozen_base_dtype(cfg, "cpu", four_bit=False) == (torch.bfloat16 if dtype == "bfloat16" else None)
    ppo = cfg.ppo_config()  # the shipped PPO preset
    assert ppo.bf16 == "auto" and ppo.compute_dtype("cpu").dtype == dtype  # PPO rollouts, updates, RM
    assert PPOConfig(bf16=False).compute_dtype("cpu").dtype == "float32"


def test_shipped_ppo_preset_is_auto() -> None:
    from training.config import load_config
    from training.ppo.config import load_ppo_config

    cfg = load_config()
    assert cfg.ppo_config().bf16 == "auto"
    assert load_ppo_config(None).bf16 == "auto"


def test_bad_precision_in_the_configs_is_a_config_error() -> None:
    from training.config import ConfigError, config_from_dict
    from training.ppo.config import PPOConfigError
    from training.ppo.config import config_from_dict as ppo_from_dict

    with pytest.raises(ConfigError, match="model.bf16"):
        config_from_dict({"model": {"bf16": "half"}})
    with pytest.raises(PPOConfigError, match="bf16"):
        ppo_from_dict({"bf16": "half"})


@pytest.mark.parametrize(("cpuinfo", "dtype"), [(AVX2_EPYC, "float32"), (ZEN4, "bfloat16")])
def test_doctor_json_reports_the_choice_for_the_faked_cpu(
    fake_machine, capsys: pytest.CaptureFixture[str], cpuinfo: str, dtype: str
) -> None:
    from app.cli import main

    fake_machine(cpuinfo)
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_dtype"] == dtype and report["serve_dtype"] == dtype
    assert report["dtypes"]["train"]["device"] == "cpu"
    assert report["cpu"]["model"] == parse_cpuinfo(cpuinfo).model
    assert ("avx512_bf16" in report["cpu"]["flags"]) == (dtype == "bfloat16")
    assert report["backend"]["reason"] == "no model published: run `ragqa setup`"
    assert report["cores"]["usable"] >= 1 and report["disk"]["free_gb"] > 0
    assert set(report["cpu_share"]) >= {"server_threads_now", "job_threads_now", "job_nice"}
    assert report["llama_cpp"]["gguf_auto"] == ("bf16" if dtype == "bfloat16" else "f16")
    # the prompt limit that keeps a CPU's first token near 1 s: 448 tokens without AVX-512, 704 with it
    assert report["prompt_limit"]["max_prompt_tokens"] == (704 if dtype == "bfloat16" else 448)
    # the relevance gate of the default embedder, without loading it
    assert report["relevance_gate"]["min_relevance"] == 0.22 and "auto" in report["relevance_gate"]["reason"]
    # the decoder-layer compile of a long retrain stage: measured to help without AVX-512 in fp32 (the AVX2 EPYC)
    # and without AMX in bf16 (the Zen 4), given a C++ compiler
    from training.layer_compile import cpp_compiler

    assert report["train_compile"]["compiled"] is (cpp_compiler() is not None)
    if cpp_compiler() is not None:
        where = "bf16 on a CPU without AMX" if dtype == "bfloat16" else "CPU without AVX-512, fp32"
        assert where in report["train_compile"]["reason"]
    # micro-batches: twice the sequences where activations are bf16 (the Zen 4); the optimizer's batch is the same
    micro = report["train_micro_batches"]
    if dtype == "bfloat16":
        assert micro == {
            "sft": {"micro_batch": 4, "grad_accum": 2},
            "reward": {"micro_batch": 2, "grad_accum": 4},
        }
    else:
        assert micro == {
            "sft": {"micro_batch": 2, "grad_accum": 4},
            "reward": {"micro_batch": 1, "grad_accum": 8},
        }
    # the attention SFT and the RM train with: query blocks where bf16 runs without AMX (the Zen 4), else SDPA
    assert report["train_attention"]["attention"] == ("causal_blocks" if dtype == "bfloat16" else "sdpa")


def test_doctor_compares_the_llama_cpp_build_with_the_cpu() -> None:
    from app.doctor import build_fit

    zen4 = parse_cpuinfo(ZEN4)
    avx2 = parse_cpuinfo(AVX2_EPYC)
    # a build without the BF16/VNNI kernels on a Zen 4: faster kernels left unbuilt
    old = build_fit(["AVX", "AVX2", "F16C", "FMA", "AVX512"], zen4)
    assert "AVX512_BF16" in old["not_built"] and old["not_on_this_cpu"] == []
    # the same build moved to an AVX2-only machine: it uses instructions this CPU lacks
    assert build_fit(["AVX", "AVX2", "AVX512"], avx2) == {"not_built": [], "not_on_this_cpu": ["AVX512"]}


def test_doctor_text_names_the_dtypes_and_why(fake_machine, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    fake_machine(AVX2_EPYC)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "train dtype:  float32 on cpu (CPU lacks amx_bf16 and avx512_bf16" in out
    assert "serve dtype:  float32" in out and "AMD EPYC 7B12" in out
    assert "relevance:    gate at 0.22 (auto: calibrated for sentence-transformers/all-MiniLM-L6-v2" in out


def test_doctor_reports_the_gate_off_for_another_embedder_or_when_set() -> None:
    from app.config import AppConfig
    from app.doctor import _relevance_gate

    other = _relevance_gate(AppConfig.load(embedder="intfloat/e5-small-v2"))
    assert other["min_relevance"] == 0.0 and "off with the embedder intfloat/e5-small-v2" in other["reason"]
    assert _relevance_gate(AppConfig.load(min_relevance=0.4)) == {
        "min_relevance": 0.4,
        "reason": "min_relevance in config.yaml",
    }
    assert _relevance_gate(AppConfig.load(min_relevance=0))["reason"].startswith("off")


def test_usable_cores_take_the_cgroup_quota_and_the_affinity(tmp_path: Path) -> None:
    assert usable_cores(affinity=8, quota=2.5) == 2
    assert usable_cores(affinity=8, quota=None, read_quota=False) == 8
    assert usable_cores(affinity=2, quota=0.5) == 1
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert hardware.cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert hardware.cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert hardware.cgroup_cpu_limit(v1) == 3.0


def test_compute_threads_honour_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "usable_cores", lambda *a, **k: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.compute_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    assert hardware.compute_threads() == 4
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert hardware.compute_threads() == 4


def test_this_machine_has_a_consistent_answer() -> None:
    cpu = hardware.read_cpuinfo()
    assert isinstance(cpu, CpuInfo)
    choice = choose_dtype("auto", device="cpu")
    assert choice.is_bf16 == bool(cpu.native_bf16)


@pytest.mark.parametrize(("backend", "limit"), [("llamacpp", 448), ("transformers", None), ("openai", None)])
def test_doctor_prompt_limit_follows_where_the_backend_computes_on_a_cuda_box(
    fake_machine, capsys: pytest.CaptureFixture[str], backend: str, limit: int | None
) -> None:
    """llama.cpp prefills on the CPU even beside a GPU, as the served model will say: the doctor must not report
    "no limit" where serving trims."""
    import os

    from app.cli import main

    fake_machine(AVX2_EPYC, cuda=(True, True))
    extra = "openai_base_url: http://127.0.0.1:9/v1\n" if backend == "openai" else ""
    (Path(os.environ["RAGQA_HOME"]) / "config.yaml").write_text(f"backend: {backend}\n{extra}")
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_limit"]["max_prompt_tokens"] == limit
