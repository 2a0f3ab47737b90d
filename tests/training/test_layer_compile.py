"""training/layer_compile.py: when the decoder layers are compiled, and that a compiled stage trains the same."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from training.layer_compile import (
    choice_for_trainer,
    choose,
    compile_if_chosen,
    compile_layers,
    decoder_layers,
    planned_steps,
)

LONG = {"device": "cpu", "steps": 100, "min_steps": 20, "compiler": "/usr/bin/g++"}


def test_auto_compiles_a_long_cpu_stage_with_a_compiler() -> None:
    choice = choose("auto", **LONG)
    assert choice.compiled and "auto: on" in choice.reason and "100 steps" in choice.reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"device": "cuda"}, "device cuda"),
        ({"compiler": None}, "no C++ compiler"),
        ({"processes": 2}, "2 processes"),
        ({"gradient_checkpointing": True}, "gradient checkpointing"),
        ({"four_bit": True}, "4-bit"),
        ({"bf16": True, "amx": True}, "bf16 on an AMX CPU"),
        ({"avx512": True}, "fp32 on an AVX-512 CPU"),
        ({"steps": 19}, "19 steps < model.compile_min_steps=20"),
    ],
)
def test_auto_stays_eager_and_says_why(change: dict, why: str) -> None:
    choice = choose("auto", **{**LONG, **change})
    assert not choice.compiled and why in choice.reason


def test_auto_compiles_bf16_on_a_cpu_without_amx_avx512_or_not() -> None:
    for avx512 in (True, False):
        choice = choose("auto", **{**LONG, "bf16": True, "avx512": avx512})
        assert choice.compiled and "bf16 on a CPU without AMX" in choice.reason


def test_explicit_settings_win_over_the_rules() -> None:
    assert choose("true", **{**LONG, "device": "cuda", "steps": 1}).compiled
    assert not choose("false", **LONG).compiled


def test_planned_steps_counts_batches_accumulation_and_epochs() -> None:
    args = SimpleNamespace(
        max_steps=-1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        world_size=1,
        num_train_epochs=2.0,
    )
    assert planned_steps(args, 100) == 26  # ceil(100 / 8) = 13 per epoch
    args.max_steps = 7
    assert planned_steps(args, 100) == 7


def _tiny_peft_model(tiny_model_dir: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def test_the_decoder_layers_of_a_peft_model_are_found_and_compiled(tiny_model_dir: Path) -> None:
    model = _tiny_peft_model(tiny_model_dir)
    layers = decoder_layers(model)
    assert layers and layers == list(model.base_model.model.model.layers)
    assert all(layer._compiled_call_impl is None for layer in layers)
    assert compile_layers(model) == len(layers)  # lazy: nothing is compiled until the first forward
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert model.lm_head._compiled_call_impl is None  # only the repeated blocks


def _fake_trainer(model, *, rows: int, max_steps: int = -1) -> SimpleNamespace:
    import torch

    args = SimpleNamespace(
        use_cpu=True,
        device=torch.device("cpu"),
        max_steps=max_steps,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        world_size=1,
        num_train_epochs=1.0,
        activation_checkpointing=False,
        bf16=False,
    )
    return SimpleNamespace(
        args=args, model=model, train_dataset=[0] * rows, accelerator=SimpleNamespace(num_processes=1)
    )


def apply_to_trainer(trainer, mode: str, min_steps: int):  # type: ignore[no-untyped-def]
    """What training/trl_stage.py's prepare_trainer does with the compile: decide, then compile if chosen."""
    return compile_if_chosen(trainer, choice_for_trainer(trainer, mode, min_steps))


def test_apply_to_trainer_compiles_only_what_it_chose(tiny_model_dir: Path, monkeypatch) -> None:
    from model_store.hardware import CpuInfo

    monkeypatch.setattr("training.layer_compile.cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.setattr("model_store.hardware.read_cpuinfo", lambda: CpuInfo("AVX2 CPU", frozenset({"avx2"})))
    short = _tiny_peft_model(tiny_model_dir)
    choice = apply_to_trainer(_fake_trainer(short, rows=3), "auto", 20)
    assert not choice.compiled and "3 steps" in choice.reason
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(short))

    long = _tiny_peft_model(tiny_model_dir)
    assert apply_to_trainer(_fake_trainer(long, rows=50), "auto", 20).compiled
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(long))

    monkeypatch.setattr("model_store.hardware.read_cpuinfo", lambda: CpuInfo("Zen 4", frozenset({"avx512f"})))
    assert not apply_to_trainer(_fake_trainer(_tiny_peft_model(tiny_model_dir), rows=50), "auto", 20).compiled


def test_the_config_takes_yaml_booleans_and_rejects_other_words(tiny_cfg) -> None:
    from training.config import ConfigError

    assert tiny_cfg().model.compile == "auto"
    assert tiny_cfg("model.compile=true").model.compile == "true"
    with pytest.raises(ConfigError, match="compile"):
        tiny_cfg("model.compile=sometimes")


@pytest.mark.slow
def test_a_compiled_sft_stage_trains_like_the_eager_one(
    tiny_model_dir: Path, export_dir: Path, tmp_path: Path, tiny_cfg
) -> None:
    """Same data, seed and steps: the compiled stage's loss matches the eager one and its adapter merges."""
    from torch._dynamo.utils import counters

    from training.data import load_export
    from training.sft import train_sft

    counters.clear()
    results = {
        mode: train_sft(
            tiny_cfg(f"model.compile={mode}"),
            model_dir=tiny_model_dir,
            data=load_export(export_dir),
            out_dir=tmp_path / mode,
        )["metrics"]
        for mode in ("false", "true")
    }
    assert results["true"]["compile"]["compiled"] and not results["false"]["compile"]["compiled"]
    # the layers really ran compiled: Dynamo made graphs, and none of its frames fell back to eager
    assert counters["stats"]["unique_graphs"] >= 1
    assert counters["frames"]["total"] >= 1 and counters["frames"]["ok"] == counters["frames"]["total"]
    assert results["true"]["train_loss"] == pytest.approx(results["false"]["train_loss"], rel=1e-3)
    assert results["true"]["merge"]["max_abs_logit_diff"] <= 1e-3
