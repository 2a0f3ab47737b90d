"""benchmarks/serving.py's pure parts on hand-made rows: the acceptance summary (ratios, TTFT in seconds, nulls
and the fresh-clone note when a row or the fresh clone is missing or failed), the length-normalised k-candidates
ratio, a candidates call's length, /proc/PID/stat reading, the trainer's step count in a log and the retrain
command. No model runs here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.serving import (
    TARGETS,
    call_length,
    finish_report,
    k_over_single,
    meets,
    process_stat,
    retrain_command,
    speed_stats,
    steps_done,
    summarise_serving,
    write_export,
)


def _stats(ttft_p50_ms: float, decode: float) -> dict:
    return {"first_token_ms": {"p50": ttft_p50_ms, "p95": ttft_p50_ms * 2}, "decode_tokens_per_s": decode}


ROWS = {
    "idle": {
        "app": _stats(1100.0, 36.0),
        "raw": _stats(780.0, 40.0),
        "app_served": _stats(950.0, 36.0),
        "app_without_lookup": _stats(1100.0, 30.0),
    },
    "during_retrain": {"app": _stats(1200.0, 27.0)},
    "k_candidates": {"ratio": {"normalised": 1.8, "raw": 2.1}},
    "agreement": {"exact_text_rate": 0.9, "prompts": 50},
}


def test_summary_ratios_from_complete_rows() -> None:
    s = summarise_serving(ROWS, {"clone_to_page_s": 300.0})
    assert s["ttft_p50_s_idle"] == 1.1 and s["ttft_p50_s_idle_served"] == 0.95
    assert s["decode_ratio_vs_raw_engine"] == 0.9  # 36 / 40
    assert s["decode_ratio_vs_raw_engine_without_lookup"] == 0.75  # 30 / 40
    assert s["prompt_lookup_speedup"] == 1.2  # 36 / 30
    assert s["decode_ratio_during_retrain"] == 0.75  # 27 / 36
    assert s["ttft_ratio_during_retrain"] == pytest.approx(1.091, abs=1e-3)  # 1.2 s / 1.1 s
    assert s["k4_over_single_ratio"] == 1.8
    assert s["k4_over_single_wall_ratio"] == 2.1
    assert s["fresh_clone_to_page_s"] == 300.0
    assert s["greedy_agreement_vs_fp32"] == 0.9
    assert "fresh_clone_note" not in s
    assert s["meets_target"] == {
        "ttft_p50_s_idle": False,
        "ttft_p50_s_idle_served": True,
        "decode_ratio_vs_raw_engine": False,
        "decode_ratio_during_retrain": True,
        "ttft_ratio_during_retrain": True,
        "k4_over_single_ratio": False,
        "fresh_clone_to_page_s": True,
    }
    assert set(s["meets_target"]) == set(TARGETS)


def test_resummarised_report_takes_the_named_fresh_clone_record(tmp_path: Path, monkeypatch) -> None:
    """A run on another CPU keeps its own fresh-clone file (--fresh-clone-out); its summary must quote that one."""
    import json

    mine = tmp_path / "fresh_clone_avx2.json"
    mine.write_text(json.dumps({"clone_to_page_s": 246.3, "commit": "abc"}))
    out = tmp_path / "serving_avx2.json"
    monkeypatch.setattr("benchmarks.serving.print_report", lambda _result: None)  # needs complete rows
    report = finish_report({"rows": ROWS}, out, mine)
    assert report["summary"]["fresh_clone_to_page_s"] == 246.3
    assert json.loads(out.read_text())["fresh_clone"]["commit"] == "abc"


def test_summary_is_null_where_rows_are_missing_or_failed() -> None:
    rows = {"idle": {"app": _stats(900.0, 30.0), "raw": None}, "during_retrain": {"error": "not training"}}
    s = summarise_serving(rows, None)
    assert s["ttft_p50_s_idle"] == 0.9
    for key in (
        "decode_ratio_vs_raw_engine",
        "decode_ratio_during_retrain",
        "ttft_ratio_during_retrain",
        "k4_over_single_ratio",
        "fresh_clone_to_page_s",
        "greedy_agreement_vs_fp32",
    ):
        assert s[key] is None, key
        assert s["meets_target"].get(key) is None
    assert "--fresh-clone" in s["fresh_clone_note"]
    assert summarise_serving({}, {"error": "`make run` exited with 2"})["fresh_clone_note"].endswith(
        "`make run` exited with 2"
    )


def test_k_ratio_is_normalised_by_length() -> None:
    trials = [
        {"single": {"wall_s": 2.0, "length": 40}, "k": {"wall_s": 6.0, "length": 60}},
        {"single": {"wall_s": 1.0, "length": 20}, "k": {"wall_s": 3.0, "length": 60}},
    ]
    r = k_over_single(trials)
    # per token: k 9 s / 120 = 0.075, single 3 s / 60 = 0.05 -> 1.5x; unnormalised 9 / 3 = 3x
    assert r["normalised"] == 1.5
    assert r["raw"] == 3.0
    assert (r["single_tokens"], r["k_tokens"], r["trials"]) == (60, 120, 2)
    assert k_over_single([]) == {"trials": 0, "normalised": None, "raw": None}


def test_shared_prefix_is_what_the_next_prompt_reuses() -> None:
    from benchmarks.serving import shared_prefix

    answers = [{"prompt_ids": [1, 2, 3, 9]}, {"prompt_ids": [1, 2, 3, 4, 5]}, {"prompt_ids": [1, 2, 7]}]
    assert shared_prefix(answers) == 2  # median of 3 and 2
    assert shared_prefix(answers[:1]) is None


def test_call_length_is_the_longest_candidate_with_its_eos_step() -> None:
    assert call_length([{"num_tokens": 10, "finished": True}, {"num_tokens": 12, "finished": False}]) == 12
    assert call_length([{"num_tokens": 12, "finished": True}, {"num_tokens": 12, "finished": False}]) == 13
    assert call_length([]) == 0


def test_speed_stats_follow_ask_latency_definitions() -> None:
    answers = [
        {"first_token_ms": 100.0, "tokens": 11, "decode_s": 0.5},
        {"first_token_ms": 300.0, "tokens": 21, "decode_s": 1.5},
        {"first_token_ms": 200.0, "tokens": 1, "decode_s": 0.0},  # one token: no decode span, left out
    ]
    s = speed_stats(answers)
    assert s["first_token_ms"]["p50"] == 200.0
    assert s["decode_tokens_per_s"] == 15.0  # (10 + 20) / 2.0 s
    assert speed_stats([]) is None


def test_meets_is_none_without_a_value() -> None:
    assert meets(None, "<", 1.0) is None
    assert meets(1.0, "<", 1.0) is False
    assert meets(1.0, "<=", 1.0) is True


def test_steps_done_reads_the_trainers_progress_bar() -> None:
    log = "Map: 100%|##| 20/20 [00:00<00:00]\r  0%|   | 0/1000 [00:00<?, ?it/s]\r  0%|   | 2/1000 [00:41<5:40:00]"
    assert steps_done(log, 1000) == 2
    assert steps_done("Map: 100%|##| 20/20 [00:00<00:00]\r  0%|   | 0/1000 [00:00<?, ?it/s]", 1000) == 0
    assert steps_done("", 1000) == 0


def test_process_stat_reads_this_process() -> None:
    stat = process_stat(os.getpid())
    assert stat["cpu_s"] > 0
    assert stat["nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert stat["threads"] >= 1


def test_export_and_retrain_command(tmp_path: Path) -> None:
    from training.data import load_export

    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q?"}]
    prompts = [{"question": "q?", "messages": messages}, {"question": "unanswered?", "messages": messages}]
    folder = write_export(tmp_path / "export", prompts, [{"question": "q?", "answer": "a [1]"}])
    data = load_export(folder)  # the trainers' own reader accepts it
    assert len(data.sft["train"]) == 1 and data.sft["train"][0]["completion"][0]["content"] == "a [1]"
    assert len(data.pairs["train"]) == 1 and len(data.prompts["train"]) == 1
    cmd = retrain_command(folder, 500)
    assert cmd[cmd.index("--stages") + 1] == "sft" and "--no-publish" in cmd
    assert f"data.export_dir={folder}" in cmd and "sft.max_steps=500" in cmd


@pytest.mark.parametrize(
    "argv",
    [
        ["--k", "5"],
        ["--questions", "0"],
        ["--agreement", "51"],
        ["--agreement", "21", "--squad", "/nonexistent.json"],
        ["--model", "v0001"],
    ],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    from benchmarks.serving import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)


def test_by_default_the_benchmark_serves_what_setup_serves() -> None:
    """`ragqa setup` publishes the shipped starter as current: the rows measure that model unless told otherwise."""
    from benchmarks.serving import parse_args

    args = parse_args([])
    assert args.model == "starter" and args.model_dir is None and args.k_questions == 20
    assert parse_args(["--model", "base"]).model == "base"
