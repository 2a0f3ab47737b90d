"""benchmarks/ask_latency.py's pure helpers for the backend comparison, on hand-computed values: decode-rate
accounting (the EOS step), ratios against raw llama.cpp and transformers fp32, greedy-agreement metrics on
hand-made token lists, GGUF bytes per token, the fixed squad2 prompt pick, printed table rows, and the manifest
copy that must never write through a hard link. No model runs here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.ask_latency import (
    COLUMNS,
    _drop_gguf_record,
    add_ratios,
    agreement_metrics,
    compare_backends,
    decode_rate,
    decode_span_s,
    decoded_tokens,
    first_divergence,
    gguf_bytes_per_token,
    parse_args,
    penalty_effect,
    pick_squad_questions,
    ratio,
    table_row,
)


# ---- decode accounting ---------------------------------------------------------------------------------
def test_decoded_tokens_counts_the_eos_step() -> None:
    assert decoded_tokens({"backend": "llamacpp", "completion_tokens": 30, "eos": True}) == 31
    assert decoded_tokens({"backend": "transformers", "completion_tokens": 30, "eos": True}) == 31
    assert decoded_tokens({"backend": "llamacpp", "completion_tokens": 64, "eos": False}) == 64


def test_decode_span_is_the_stats_decode_time() -> None:
    assert decode_span_s({"completion_tokens": 21, "decode_s": 0.2}) == pytest.approx(0.2)
    assert decode_span_s({"completion_tokens": 1, "decode_s": None}) == 0.0


def test_decode_rate_sums_tokens_and_spans_and_skips_one_token_answers() -> None:
    answers = [
        {"tokens": 11, "decode_s": 0.1},
        {"tokens": 21, "decode_s": 0.3},
        {"tokens": 1, "decode_s": 0.0},
    ]
    assert decode_rate(answers) == 75.0  # (10 + 20) / 0.4
    assert decode_rate([{"tokens": 1, "decode_s": 0.0}]) is None


def test_ratio() -> None:
    assert ratio(95.0, 100.0) == 0.95
    assert ratio(None, 100.0) is None
    assert ratio(95.0, None) is None
    assert ratio(95.0, 0.0) is None


def test_add_ratios_against_raw_and_fp32_rows() -> None:
    runs = [
        {"backend": "transformers float32", "decode_tokens_per_s": 20.0, "first_token_ms": {"p50": 1600.0}},
        {"backend": "llamacpp q8_0", "decode_tokens_per_s": 96.0, "first_token_ms": {"p50": 1300.0}},
        {
            "backend": "raw llama.cpp q8_0",
            "kind": "raw",
            "decode_tokens_per_s": 100.0,
            "first_token_ms": {"p50": 1250.0},
        },
    ]
    add_ratios(runs)
    assert runs[1]["vs_raw"] == 0.96
    assert runs[1]["vs_fp32"] == 4.8
    assert runs[0]["vs_fp32"] == 1.0
    assert runs[2]["vs_raw"] == 1.0
    assert runs[1]["first_token_p50_vs_raw"] == 1.04


def test_add_ratios_without_reference_rows_leaves_none() -> None:
    runs = [{"backend": "llamacpp q8_0", "decode_tokens_per_s": 96.0, "first_token_ms": None}]
    add_ratios(runs)
    assert runs[0]["vs_raw"] is None and runs[0]["vs_fp32"] is None


def test_penalty_effect_compares_the_two_app_rows() -> None:
    runs = [
        {"backend": "llamacpp q8_0", "repetition_penalty": 1.1, "decode_tokens_per_s": 98.0},
        {
            "backend": "llamacpp q8_0 (penalty 1.0)",
            "repetition_penalty": 1.0,
            "decode_tokens_per_s": 100.0,
            "vs_raw": 0.99,
        },
    ]
    assert penalty_effect(runs, "q8_0") == {"penalty": 1.1, "decode_ratio": 0.98, "penalty_off_vs_raw": 0.99}
    assert penalty_effect(runs[:1], "q8_0") is None


# ---- agreement -----------------------------------------------------------------------------------------
def test_first_divergence() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # one is a prefix of the other: diverges where it ends
    assert first_divergence([], [5]) == 0
    assert first_divergence([], []) is None


def _pair(key: str, a: list[int], b: list[int]) -> dict:
    return {
        "key": key,
        "question": f"q {key}",
        "text_a": " ".join(map(str, a)),
        "text_b": " ".join(map(str, b)),
        "tokens_a": a,
        "tokens_b": b,
    }


def test_agreement_metrics_on_hand_made_token_lists() -> None:
    same = list(range(12))
    pairs = [
        _pair("same", same, same),
        _pair("at1", [1, 2, 3], [1, 9, 3]),
        _pair("at10", same, same[:10] + [99, 11]),  # first 8 tokens still match
        _pair("short", [1, 2, 3], [1, 2, 3, 4]),
    ]
    m = agreement_metrics(pairs, first_n=8)
    assert m["prompts"] == 4
    assert m["exact_text_rate"] == 0.25
    assert m["token_identical_rate"] == 0.25
    assert m["first_n_tokens_rate"] == 0.5  # "same" and "at10"
    assert m["diverged"] == 3
    assert m["mean_first_divergence"] == pytest.approx((1 + 10 + 3) / 3, abs=0.05)
    assert [e["key"] for e in m["examples"]] == ["at1", "at10"]
    assert m["examples"][0]["first_divergence"] == 1


def test_agreement_metrics_empty_and_all_equal() -> None:
    assert agreement_metrics([]) == {"prompts": 0}
    m = agreement_metrics([_pair("a", [1], [1]), _pair("b", [2, 3], [2, 3])])
    assert m["exact_text_rate"] == 1.0 and m["mean_first_divergence"] is None and m["examples"] == []


def test_compare_backends_counts_identical_prompts_and_splits_by_source() -> None:
    prompts = [
        {"key": "demo:0", "source": "demo", "question": "q0"},
        {"key": "squad2:x", "source": "squad2", "question": "q1"},
    ]
    a = {
        "demo:0": {"text": "yes", "tokens": [1], "prompt_hash": "h0"},
        "squad2:x": {"text": "no", "tokens": [2], "prompt_hash": "h1"},
    }
    b = {
        "demo:0": {"text": "yes", "tokens": [1], "prompt_hash": "h0"},
        "squad2:x": {"text": "maybe", "tokens": [3], "prompt_hash": "other"},
    }
    m = compare_backends(prompts, a, b)
    assert m["same_prompt_ids"] == 1
    assert m["exact_text_rate"] == 0.5
    assert m["by_source"]["demo"]["exact_text_rate"] == 1.0
    assert m["by_source"]["squad2"]["exact_text_rate"] == 0.0


def test_pick_squad_questions_is_fixed_and_evenly_spaced() -> None:
    data = {
        "data": [
            {
                "title": f"T{t}",
                "paragraphs": [
                    {
                        "context": f"c{t}{p}",
                        "qas": [
                            {"id": f"{t}{p}a", "question": f"Q{t}{p}?", "is_impossible": p == 1},
                            {"id": f"{t}{p}b", "question": "second"},
                        ],
                    }
                    for p in range(3)
                ],
            }
            for t in range(2)
        ]
    }
    picked = pick_squad_questions(data, 3)  # 6 paragraphs, stride 2: paragraphs 0, 2, 4
    assert [q["id"] for q in picked] == ["00a", "02a", "11a"]
    assert [q["answerable"] for q in picked] == [True, True, False]
    assert picked[1]["context"] == "c02" and picked[2]["title"] == "T1"
    assert pick_squad_questions(data, 0) == []
    assert len(pick_squad_questions(data, 50)) == 6


# ---- bytes per token -----------------------------------------------------------------------------------
def test_gguf_bytes_per_token_tied_and_untied() -> None:
    tied = gguf_bytes_per_token([("token_embd.weight", 1000, 10), ("blk.0.ffn_up.weight", 500, 5)])
    assert tied == {"tied_embeddings": True, "embedding_row_bytes": 0, "weights_bytes_per_token": 1500}
    untied = gguf_bytes_per_token(
        [("token_embd.weight", 1000, 10), ("blk.0.ffn_up.weight", 500, 5), ("output.weight", 1000, 10)]
    )
    assert untied == {"tied_embeddings": False, "embedding_row_bytes": 100, "weights_bytes_per_token": 1600}


# ---- table ---------------------------------------------------------------------------------------------
def test_table_rows_for_an_app_row_and_a_raw_row() -> None:
    app = {
        "backend": "llamacpp q8_0",
        "repetition_penalty": 1.1,
        "retrieve_ms": {"p50": 10.2, "p95": 12.0},
        "first_token_ms": {"p50": 1300.4, "p95": 1400.0},
        "total_ms": {"p50": 1900.0, "p95": 2100.0},
        "request_first_token_ms": {"p50": 1312.0, "p95": 1420.0},
        "request_total_ms": {"p50": 1915.0, "p95": 2115.0},
        "mean_answer_tokens": 41.25,
        "decode_tokens_per_s": 99.6,
        "vs_raw": 0.958,
        "vs_raw_engine": 0.94,
        "vs_fp32": 6.09,
        "bound_tokens_per_s": 448.2,
        "percent_of_bound": 22.2,
        "bytes_per_token": {"weights_bytes_per_token": 143_025_408},
    }
    row = table_row(app)
    assert len(row) == len(COLUMNS)
    assert row == [
        "llamacpp q8_0",
        "1.1",
        "10 / 12",
        "1300 / 1400",
        "1900 / 2100",
        "1312 / 1915",
        "41.2",
        "99.6",
        "0.96x",
        "0.94x",
        "6.09x",
        "448",
        "22%",
        "143",
    ]
    raw = {
        "backend": "raw llama.cpp q8_0",
        "repetition_penalty": 1.0,
        "first_token_ms": {"p50": 1250, "p95": 1300},
        "total_ms": {"p50": 1800, "p95": 2000},
        "mean_answer_tokens": 41.25,
        "decode_tokens_per_s": 104.0,
        "vs_raw": 1.0,
        "vs_fp32": None,
        "bound_tokens_per_s": None,
        "percent_of_bound": None,
        "bytes_per_token": None,
    }
    row = table_row(raw)
    assert row[1] == "1" and row[2] == "-" and row[5] == "-" and row[9] == "-" and row[12] == "-"


# ---- flags and the temp home ---------------------------------------------------------------------------
def test_parse_args_defaults_and_raw_needs_the_app_row() -> None:
    args = parse_args([])
    assert args.backends == ["transformers", "llamacpp", "raw"]
    assert args.gguf_type == "f16" and args.agreement_questions == 50 and args.penalty_row
    args = parse_args(["--backends", "llamacpp", "raw", "--gguf-type", "f16", "--sizes", "--no-penalty-row"])
    assert args.sizes == [] and args.gguf_type == "f16" and not args.penalty_row
    with pytest.raises(SystemExit):
        parse_args(["--backends", "raw"])
    with pytest.raises(SystemExit):
        parse_args(["--agreement-questions", "51"])


def test_drop_gguf_record_never_writes_through_the_hard_link(tmp_path: Path) -> None:
    source = tmp_path / "source.json"
    source.write_text(json.dumps({"version": "v0001", "gguf": {"file": "model.q8_0.gguf"}}))
    linked = tmp_path / "linked.json"
    os.link(source, linked)
    _drop_gguf_record(linked)
    assert json.loads(source.read_text())["gguf"] == {"file": "model.q8_0.gguf"}
    assert json.loads(linked.read_text()) == {"version": "v0001"}
    assert os.stat(source).st_nlink == 1


def test_vs_raw_compares_rows_that_sample_alike() -> None:
    """The app row with penalty 1.1 is compared with raw llama.cpp at 1.1; vs_raw_engine with raw at 1.0."""
    runs = [
        {
            "backend": "llamacpp f16",
            "repetition_penalty": 1.1,
            "decode_tokens_per_s": 84.0,
            "first_token_ms": None,
        },
        {
            "backend": "raw",
            "kind": "raw",
            "repetition_penalty": 1.0,
            "decode_tokens_per_s": 88.0,
            "first_token_ms": None,
        },
        {
            "backend": "raw pen",
            "kind": "raw",
            "repetition_penalty": 1.1,
            "decode_tokens_per_s": 86.0,
            "first_token_ms": None,
        },
        {
            "backend": "llamacpp f16 (penalty 1.0)",
            "repetition_penalty": 1.0,
            "decode_tokens_per_s": 87.0,
            "first_token_ms": None,
        },
    ]
    add_ratios(runs)
    assert (runs[0]["vs_raw_reference"], runs[0]["vs_raw"], runs[0]["vs_raw_engine"]) == (
        "raw pen",
        0.977,
        0.955,
    )
    assert (runs[3]["vs_raw_reference"], runs[3]["vs_raw"]) == ("raw", 0.989)
