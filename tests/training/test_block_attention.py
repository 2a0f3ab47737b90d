"""Causal attention in query blocks (training/block_attention.py): SDPA's result where it runs, SDPA itself elsewhere."""

from __future__ import annotations

import pytest
import torch

from training import block_attention as ba


def _tiny_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,  # grouped: 3 query heads per key/value head, as SmolLM2's 9 / 3
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Shapes of the queries the blocks computed (empty when every call went to SDPA)."""
    calls: list[tuple[int, ...]] = []
    real = ba.block_causal_attention

    def spy(query, key, value, scaling):  # type: ignore[no-untyped-def]
        calls.append(tuple(query.shape))
        return real(query, key, value, scaling)

    monkeypatch.setattr(ba, "block_causal_attention", spy)
    return calls


def _use_blocks(model: torch.nn.Module) -> None:
    ba.set_attention(model, ba.AttentionChoice(ba.NAME, "test"))
    assert model.config._attn_implementation == ba.NAME


def test_blocks_compute_sdpa_causal_attention_and_its_gradients(
    monkeypatch: pytest.MonkeyPatch, counted: list
) -> None:
    # fp32 so the comparison is tight (the blocks are used in bf16 only: widened here to check the maths);
    # 300 tokens = two full blocks of 128 and a partial one
    monkeypatch.setattr(ba, "DTYPES", (torch.float32, torch.bfloat16))
    model = _tiny_llama()
    ids = torch.randint(0, 101, (2, 300), generator=torch.Generator().manual_seed(1))

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_ids=ids).logits
        (logits.float().pow(2).mean()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    ref_logits, ref_grads = logits_and_grads()
    assert counted == []
    _use_blocks(model)
    logits, grads = logits_and_grads()
    assert counted and counted[0] == (2, 6, 300, 16)  # both layers, forward, through the blocks
    assert torch.allclose(logits, ref_logits, atol=2e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_in_bf16_the_blocks_stay_close_to_sdpa(counted: list) -> None:
    model = _tiny_llama(torch.bfloat16)
    ids = torch.randint(0, 101, (2, 200), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
        _use_blocks(model)
        got = model(input_ids=ids).logits.float()
    assert counted, "bf16 causal batch: the blocks should have run"
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_a_padding_mask_goes_to_sdpa_and_keeps_its_padding(
    monkeypatch: pytest.MonkeyPatch, counted: list
) -> None:
    # left padding (generation, PPO): the mask must reach SDPA. transformers builds no mask at all for an attention
    # name it does not know, which would let the real tokens attend to the pads: the mask function is registered.
    monkeypatch.setattr(ba, "DTYPES", (torch.float32,))
    model = _tiny_llama()
    ids = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, :15] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        _use_blocks(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        unpadded = model(input_ids=ids[:1, 15:]).logits  # the padded row alone, without its pads
    assert counted == [(1, 6, 25, 16)] * 2  # only the unpadded call ran the blocks (2 layers)
    assert torch.equal(got, ref)
    assert torch.allclose(got[0, 15:], unpadded[0], atol=1e-4)


def test_fp32_long_sequences_and_generation_go_to_sdpa(
    monkeypatch: pytest.MonkeyPatch, counted: list
) -> None:
    model = _tiny_llama(torch.bfloat16)
    _use_blocks(model)
    ids = torch.randint(0, 101, (1, 24), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(ba, "MAX_TOKENS", 16)
    with torch.no_grad():
        model(input_ids=ids)  # longer than MAX_TOKENS
    monkeypatch.setattr(ba, "MAX_TOKENS", 768)
    with torch.no_grad():
        model.generate(
            input_ids=ids, max_new_tokens=3, do_sample=False
        )  # prefill runs the blocks, decoding not
    assert counted == [(1, 6, 24, 16)] * 2
    counted.clear()
    with torch.no_grad():
        model.float()(input_ids=ids)
    assert counted == []


@pytest.mark.parametrize(
    ("mode", "device", "bf16", "amx", "attention"),
    [
        ("auto", "cpu", True, False, ba.NAME),  # Zen 4: avx512_bf16, no AMX (measured)
        ("auto", "cpu", False, False, "sdpa"),  # AVX2 only: fp32, where SDPA was faster
        ("auto", "cpu", True, True, "sdpa"),  # AMX: unmeasured
        ("auto", "cuda", True, False, "sdpa"),
        ("sdpa", "cpu", True, False, "sdpa"),
        ("blocks", "cpu", False, True, ba.NAME),
    ],
)
def test_choice_by_hardware(mode: str, device: str, bf16: bool, amx: bool, attention: str) -> None:
    choice = ba.choose(mode, device=device, bf16=bf16, amx=amx)
    assert choice.attention == attention
    assert choice.reason.startswith("auto" if mode == "auto" else f"model.attention={mode}")


def test_the_config_refuses_an_unknown_attention() -> None:
    from training.config import ConfigError, load_config

    assert load_config(None, []).model.attention == "auto"
    with pytest.raises(ConfigError, match="model.attention"):
        load_config(None, ["model.attention=flash"])
