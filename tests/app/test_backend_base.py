"""GenerationStats: the timings every backend reports, with hand-set clocks."""

from __future__ import annotations

from app.backends.base import GenerationStats


def _stats(tokens: int, eos: bool, first: float = 10.0, end: float = 12.0) -> GenerationStats:
    s = GenerationStats(backend="x", started=9.0)
    for _ in range(tokens):
        s.mark_token()
    if eos:
        s.mark_eos()
    s.first_token, s.ended = first, end
    return s


def test_decode_rate_counts_the_eos_step_but_not_as_an_answer_token() -> None:
    with_eos = _stats(9, eos=True)
    assert with_eos.completion_tokens == 9
    assert with_eos.decode_tokens_per_s == 9 / 2.0  # 10 steps, the first is prefill's: 9 in 2 s
    assert _stats(9, eos=False).decode_tokens_per_s == 8 / 2.0


def test_no_rate_without_two_steps_and_json_fields() -> None:
    assert _stats(1, eos=False).decode_tokens_per_s is None
    assert _stats(0, eos=True).decode_tokens_per_s is None
    s = _stats(5, eos=True)
    s.end("stop")
    out = s.to_json()
    assert out["completion_tokens"] == 5 and out["finish_reason"] == "stop" and out["backend"] == "x"
    assert out["first_token_ms"] == 1000.0
