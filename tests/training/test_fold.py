"""Folding a chain of fine-tunes (adapter on base, next adapter on the merged model, ...) into one adapter on base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import prompt_for, random_adapter
from training.fold import FoldError, fold_adapters, main
from training.merge import merge_adapter

CONVERSATIONS = [prompt_for(0) + [{"role": "assistant", "content": "Paris [1]"}], prompt_for(1)]


@pytest.fixture
def chain(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """base -> adapter 1 -> merged 1 -> adapter 2 (trained on merged 1) -> merged 2 (the chain's final model)."""
    first = random_adapter(tiny_model_dir, tmp_path / "a1", seed=1)
    merge_adapter(tiny_model_dir, first, tmp_path / "m1", check_conversations=CONVERSATIONS, atol=1e-4)
    second = random_adapter(tmp_path / "m1", tmp_path / "a2", seed=2)
    merge_adapter(tmp_path / "m1", second, tmp_path / "m2", check_conversations=CONVERSATIONS, atol=1e-4)
    return {
        "base": tiny_model_dir,
        "a1": first,
        "a2": second,
        "final": tmp_path / "m2",
    }


def test_an_exact_fold_reproduces_the_chain_on_the_first_base(chain: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "folded"
    result = fold_adapters(
        chain["base"],
        [chain["a1"], chain["a2"]],
        out,
        reference=chain["final"],
        check_conversations=CONVERSATIONS,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert result["method"] == "cat" and result["rank"] == 8 and config["r"] == 8
    # Saved in float16: the only error left is that rounding (the chain's own gap is ~1e-6 in fp32).
    close = result["vs_reference"]
    assert close["max_abs_logit_diff"] < 5e-3 and close["greedy_agreement"] == 1.0

    # Control: the last part alone on the base is NOT the chain (the comparison can tell them apart).
    alone = fold_adapters(
        chain["base"],
        [chain["a2"]],
        tmp_path / "alone",
        reference=chain["final"],
        check_conversations=CONVERSATIONS,
    )
    assert alone["vs_reference"]["max_abs_logit_diff"] > 100 * close["max_abs_logit_diff"]


def test_a_truncated_fold_has_the_asked_rank_and_says_how_far_it_is(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    exact = fold_adapters(
        chain["base"],
        [chain["a1"], chain["a2"]],
        tmp_path / "exact",
        reference=chain["final"],
        check_conversations=CONVERSATIONS,
    )
    low = fold_adapters(
        chain["base"],
        [chain["a1"], chain["a2"]],
        tmp_path / "low",
        rank=2,
        reference=chain["final"],
        check_conversations=CONVERSATIONS,
    )
    assert (
        low["method"] == "svd"
        and json.loads((tmp_path / "low" / "adapter_config.json").read_text())["r"] == 2
    )
    assert low["vs_reference"]["mean_abs_logit_diff"] > exact["vs_reference"]["mean_abs_logit_diff"]


def test_parts_on_different_modules_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = random_adapter(tiny_model_dir, tmp_path / "a", seed=1, targets=["q_proj", "v_proj"])
    b = random_adapter(tiny_model_dir, tmp_path / "b", seed=2)
    with pytest.raises(FoldError, match="different modules"):
        fold_adapters(tiny_model_dir, [a, b], tmp_path / "out", check_conversations=CONVERSATIONS)
    with pytest.raises(FoldError, match="not a LoRA adapter"):
        fold_adapters(tiny_model_dir, [tmp_path], tmp_path / "out", check_conversations=CONVERSATIONS)


def test_the_command_writes_the_first_parts_card_with_the_fold(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    (chain["a1"] / "starter.json").write_text(json.dumps({"kind": "starter", "licence": "CC BY-SA 4.0"}))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"split": {"heldout": ["Warsaw"]}, "other": 1}))
    out = tmp_path / "shipped"
    argv = ["--base", str(chain["base"]), "--adapter", str(chain["a1"]), "--adapter", str(chain["a2"])]
    argv += ["--out", str(out), "--reference", str(chain["final"]), "--report", str(report)]
    assert main(argv + ["--trained-with", "starter, then a loop run"]) == 0
    card = json.loads((out / "starter.json").read_text())
    assert card["licence"] == "CC BY-SA 4.0" and card["trained_with"] == "starter, then a loop run"
    assert card["folded"]["loop"] == {"split": {"heldout": ["Warsaw"]}}
    assert [Path(p["adapter"]).name for p in card["folded"]["parts"]] == ["a1", "a2"]


def _linear_weights(folder: Path) -> dict[str, object]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("proj.weight")}


def test_weights_scale_each_parts_delta(chain: dict[str, Path], tmp_path: Path) -> None:
    """base + 1 x delta1 + 0.5 x delta2: the weighted fold interpolates between the first part and the chain."""
    import torch
    from peft import PeftModel

    from model_store.loading import load_causal_lm

    out = tmp_path / "half"
    result = fold_adapters(
        chain["base"],
        [chain["a1"], chain["a2"]],
        out,
        weights=[1.0, 0.5],
        check_conversations=CONVERSATIONS,
    )
    assert [p["weight"] for p in result["parts"]] == [1.0, 0.5]
    folded = PeftModel.from_pretrained(load_causal_lm(chain["base"], dtype=torch.float32), str(out))
    got = {k: v for k, v in folded.merge_and_unload().state_dict().items() if k.endswith("proj.weight")}
    base = _linear_weights(chain["base"])
    m1, m2 = _linear_weights(chain["a1"].parent / "m1"), _linear_weights(chain["final"])
    worst, half_delta2 = 0.0, 0.0
    for name, w in got.items():
        expected = m1[name] + 0.5 * (m2[name] - m1[name])
        worst = max(worst, float((w - expected).abs().max()))
        half_delta2 = max(half_delta2, float((0.5 * (m2[name] - m1[name])).abs().max()))
        assert not torch.equal(base[name], m1[name])  # the parts did change these weights
    assert half_delta2 > 0.05  # a visible second delta: the check below can tell 0.5 from 1 or 0
    assert worst < 0.01 * half_delta2, (worst, half_delta2)  # float16 rounding of the saved adapter only


def test_bad_weights_are_refused(chain: dict[str, Path], tmp_path: Path) -> None:
    parts = [chain["a1"], chain["a2"]]
    with pytest.raises(FoldError, match="one weight per adapter"):
        fold_adapters(chain["base"], parts, tmp_path / "o", weights=[1.0], check_conversations=CONVERSATIONS)
    with pytest.raises(FoldError, match="must be > 0"):
        fold_adapters(
            chain["base"], parts, tmp_path / "o", weights=[1.0, 0.0], check_conversations=CONVERSATIONS
        )


def test_a_weighted_fold_has_no_reference_to_match(chain: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FoldError, match="not the chain"):
        fold_adapters(
            chain["base"],
            [chain["a1"], chain["a2"]],
            tmp_path / "o",
            weights=[1.0, 0.5],
            reference=chain["final"],
            check_conversations=CONVERSATIONS,
        )
