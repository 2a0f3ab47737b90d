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

    def spy(query, key, value, scaling, mask=None):  # type: ignore[no-untyped-def]
        calls.append(tuple(query.shape))
        return real(query, key, value, scaling, mask)

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


def _attention_and_grads(fn, dtype: torch.dtype, tokens: int = 300):  # type: ignore[no-untyped-def]
    """fn(q, k, v) -> [B, T, H, D] and the gradients of a random projection of it, from transformers' layout
    (q/k/v made [B, T, heads, D], then transposed: strided as the model hands them over)."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, tokens, heads, 16, generator=g).transpose(1, 2) for heads in (6, 2, 2))
    weights = torch.randn(2, tokens, 6, 16, generator=g)
    inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*inputs)
    (out.float() * weights).sum().backward()
    return out.detach().float(), [x.grad.float() for x in inputs]


def test_in_bf16_the_blocks_and_their_gradients_stay_within_bf16_rounding_of_fp32() -> None:
    def sdpa(q, k, v):  # type: ignore[no-untyped-def]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True
        ).transpose(1, 2)

    ref, ref_grads = _attention_and_grads(sdpa, torch.float32)
    got, grads = _attention_and_grads(
        lambda q, k, v: ba.block_causal_attention(q, k, v, 0.25), torch.bfloat16
    )
    # measured: 0.3% of the largest value for the output, 0.5-0.9% for the gradients (the fp32 scores of the
    # earlier version: the same); a wrong mask, scale or softmax is off by far more
    assert (got - ref).abs().max() < 0.01 * ref.abs().max()
    for a, b in zip(grads, ref_grads, strict=True):
        assert (a - b).abs().max() < 0.02 * b.abs().max()


def test_the_cached_block_masks_stay_few_across_many_lengths() -> None:
    def sdpa(q, k, v):  # type: ignore[no-untyped-def]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True
        ).transpose(1, 2)

    for tokens in range(130, 400, 7):  # each length ends in a block of its own
        got, _ = _attention_and_grads(
            lambda q, k, v: ba.block_causal_attention(q, k, v, 0.25), torch.float32, tokens
        )
        assert len(ba._block_biases) <= ba._BLOCK_BIASES_KEPT
    want, _ = _attention_and_grads(sdpa, torch.float32, tokens)
    assert torch.allclose(got, want, atol=1e-5)


def test_an_fp32_model_under_bf16_autocast_runs_the_blocks(counted: list) -> None:
    # the reward model's case: fp32 weights, bf16 autocast; rotary embeddings hand attention fp32 queries
    model = _tiny_llama()
    ids = torch.randint(0, 101, (2, 200), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(input_ids=ids).logits.float()
        _use_blocks(model)
        got = model(input_ids=ids).logits.float()
    assert counted and counted[0][2] == 200
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_a_left_padded_batch_keeps_its_padding_and_its_gradients(
    monkeypatch: pytest.MonkeyPatch, counted: list
) -> None:
    # left padding (PPO): transformers builds no mask at all for an attention name it does not know, which would
    # let the real tokens attend to the pads: SDPA's mask function is registered under the name, and the blocks
    # apply it. 150 tokens: a padded row's pads fill its whole first block (those rows must not turn NaN).
    monkeypatch.setattr(ba, "DTYPES", (torch.float32,))
    model = _tiny_llama()
    ids = torch.randint(0, 101, (2, 150), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 150, dtype=torch.long)
    mask[0, :130] = 0

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].pow(2).mean().backward()  # a loss on the real tokens only, as PPO's
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = run()
    _use_blocks(model)
    got, grads = run()
    assert counted == [(2, 6, 150, 16)] * 2  # both layers through the blocks, with the mask
    real = mask.bool()
    assert torch.allclose(got[real], ref[real], atol=2e-5)
    assert torch.isfinite(got).all()
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        alone = model(input_ids=ids[:1, 130:]).logits  # the padded row without its pads
    assert torch.allclose(got[0, 130:], alone[0], atol=1e-4)


def test_other_masks_go_to_sdpa(monkeypatch: pytest.MonkeyPatch, counted: list) -> None:
    monkeypatch.setattr(ba, "DTYPES", (torch.float32,))
    q = torch.randn(1, 6, 8, 16)
    k = v = torch.randn(1, 2, 8, 16)
    module = torch.nn.Module()
    module.num_key_value_groups = 3
    float_mask = torch.zeros(1, 1, 8, 8)
    per_head = torch.ones(1, 6, 8, 8, dtype=torch.bool).tril()
    for mask in (float_mask, per_head):
        ba.causal_block_attention(module, q, k, v, mask)
    assert counted == []
    ba.causal_block_attention(module, q, k, v, per_head[:, :1])
    assert counted == [(1, 6, 8, 16)]


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


def test_a_retrain_stage_that_compiles_keeps_the_blocks(tiny_model_dir, tmp_path, tiny_cfg) -> None:  # type: ignore[no-untyped-def]
    from tests.training.conftest import write_export
    from training.data import load_export
    from training.layer_compile import uncompile_layers
    from training.sft import build_sft_trainer
    from training.trl_stage import prepare_trainer

    data = load_export(write_export(tmp_path / "e"))
    runs = {}
    for compile_mode in ("true", "false"):
        cfg = tiny_cfg(f"model.compile={compile_mode}", "model.attention=blocks")
        trainer = build_sft_trainer(cfg, tiny_model_dir, data, tmp_path / compile_mode)
        runs[compile_mode] = prepare_trainer(trainer, cfg)
        uncompile_layers(trainer.model)
    assert runs["true"][0]["compiled"] and runs["true"][1]["attention"] == ba.NAME
    assert not runs["false"][0]["compiled"] and runs["false"][1]["attention"] == ba.NAME


def test_compiled_layers_call_the_blocks_outside_their_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled decoder layers give the eager result and its gradients, and call the blocks eagerly, outside their
    graph (Dynamo tracing the blocks would report is_compiling() inside them), at every sequence length."""
    import torch._dynamo

    from training.layer_compile import compile_layers, uncompile_layers

    counted: list[tuple[int, bool]] = []
    real = ba.block_causal_attention

    def spy(query, key, value, scaling, mask=None):  # type: ignore[no-untyped-def]
        counted.append((query.shape[2], torch.compiler.is_compiling()))
        return real(query, key, value, scaling, mask)

    monkeypatch.setattr(ba, "block_causal_attention", spy)
    monkeypatch.setattr(ba, "DTYPES", (torch.float32, torch.bfloat16))
    model = _tiny_llama()
    _use_blocks(model)

    def logits_and_grads(tokens: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        ids = torch.randint(0, 101, (2, tokens), generator=torch.Generator().manual_seed(tokens))
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.float().pow(2).mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    eager = {n: logits_and_grads(n) for n in (200, 300)}
    counted.clear()
    torch._dynamo.reset()
    compile_layers(model)
    try:
        for tokens, (want, want_grads) in eager.items():
            got, grads = logits_and_grads(tokens)
            assert torch.allclose(got, want, atol=1e-4)
            for a, b in zip(grads, want_grads, strict=True):
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    finally:
        uncompile_layers(model)
        torch._dynamo.reset()
    assert counted == [(200, False)] * 2 + [(300, False)] * 2  # 2 layers x 2 lengths, all eager


def test_the_reward_models_classifier_switches(tmp_path, tiny_cfg, tiny_model_dir) -> None:  # type: ignore[no-untyped-def]
    from tests.training.conftest import write_export
    from training.data import load_export
    from training.reward import build_reward_trainer

    pairs = load_export(write_export(tmp_path / "e")).pairs["train"]
    trainer, _ = build_reward_trainer(tiny_cfg(), tiny_model_dir, pairs, tmp_path / "rm")
    choice = ba.apply_to_trainer(trainer, "blocks")
    assert choice.attention == ba.NAME
    classifier = trainer.model.get_base_model()
    assert type(classifier).__name__.endswith("ForSequenceClassification")
    assert classifier.config._attn_implementation == ba.NAME


def test_a_model_that_cannot_switch_is_reported_as_it_runs() -> None:
    class Stubborn(torch.nn.Module):  # transformers only warns for such a class
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Config", (), {"_attn_implementation": "sdpa"})()

        def set_attn_implementation(self, name: str) -> None:
            pass

    choice = ba.set_attention(Stubborn(), ba.AttentionChoice(ba.NAME, "auto: query blocks"))
    assert choice.attention == "sdpa" and "cannot switch" in choice.reason


def test_the_config_refuses_an_unknown_attention() -> None:
    from training.config import ConfigError, load_config

    assert load_config(None, []).model.attention == "auto"
    with pytest.raises(ConfigError, match="model.attention"):
        load_config(None, ["model.attention=flash"])
