"""benchmarks/serving_engines.py's pure helpers on hand-made data: the 4-passage prompt pick, the shared-prefix
length, the TTFT/decode and k-candidate summaries, agreement on token ids, CPU flag parsing, the printed row of a
skipped engine, and the skip reason of a row whose engine or model files are missing. No engine runs here."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.serving_engines import (
    COLUMNS,
    ROWS,
    EngineBenchError,
    Row,
    agreement,
    common_prefix_length,
    cut_words,
    missing_engine,
    parse_args,
    rag_items,
    summarise_greedy,
    summarise_k,
    table_row,
)


def _squad(articles: int, paragraphs: int) -> dict:
    return {
        "data": [
            {
                "title": f"A{a}",
                "paragraphs": [
                    {
                        "context": f"a{a} p{p} " + "word " * 200,
                        "qas": [{"id": f"q{a}.{p}", "question": f"what {a} {p}?", "is_impossible": False}],
                    }
                    for p in range(paragraphs)
                ],
            }
            for a in range(articles)
        ]
    }


# ---- prompts -------------------------------------------------------------------------------------------
def test_rag_items_give_four_passages_from_the_questions_article_with_the_gold_one_rotating() -> None:
    items = rag_items(_squad(3, 5), 8, passages=4, words=10)
    assert len(items) == 8
    for k, item in enumerate(items):
        article, paragraph = item["id"][1:].split(".")
        texts = [p["text"] for p in item["passages"]]
        assert len(texts) == 4
        assert item["gold_position"] == k % 4 + 1
        assert texts[item["gold_position"] - 1].startswith(f"a{article} p{paragraph} ")
        assert all(t.startswith(f"a{article} ") for t in texts)  # the same article
        assert len(set(texts)) == 4  # four different paragraphs
        assert all(len(t.split()) == 10 for t in texts)  # cut to `words`
        assert {p["source"] for p in item["passages"]} == {f"squad2/A{article}"}


def test_rag_items_wrap_round_the_article_and_skip_short_articles() -> None:
    data = _squad(1, 4)
    data["data"].append(_squad(1, 3)["data"][0] | {"title": "short"})  # 3 paragraphs: too few for 4 passages
    items = rag_items(data, 10, passages=4, words=3)
    assert [i["id"] for i in items] == ["q0.0", "q0.1", "q0.2", "q0.3"]
    last = items[-1]  # paragraph 3: the passages after it wrap to 0, 1, 2
    assert sorted(p["text"].split()[1] for p in last["passages"]) == ["p0", "p1", "p2", "p3"]
    assert rag_items(data, 0) == []


def test_cut_words_keeps_the_first_words_and_normalises_spaces() -> None:
    assert cut_words("a  b\nc d", 3) == "a b c"
    assert cut_words("a b", 10) == "a b"


def test_common_prefix_length() -> None:
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 7]]) == 2
    assert common_prefix_length([[1, 2], [1, 2, 3]]) == 2
    assert common_prefix_length([[5], [6]]) == 0
    assert common_prefix_length([]) == 0


# ---- measurements --------------------------------------------------------------------------------------
def test_summarise_greedy_counts_steps_minus_one_over_the_decode_time() -> None:
    runs = [
        {"ttft_s": 0.5, "decode_s": 1.0, "steps": 11, "ids": list(range(10)), "prompt_tokens": 700},
        {"ttft_s": 1.5, "decode_s": 2.0, "steps": 21, "ids": list(range(21)), "prompt_tokens": 800},
        {"ttft_s": 1.0, "decode_s": 0.0, "steps": 1, "ids": [], "prompt_tokens": 750},  # EOS first: no decode
    ]
    s = summarise_greedy(runs)
    assert s["decode_tok_s"] == pytest.approx(30 / 3.0)
    assert s["ttft_p50_s"] == 1.0
    assert s["ttft_p95_s"] == 1.5
    assert s["mean_prompt_tokens"] == 750
    assert s["mean_answer_tokens"] == pytest.approx(31 / 3, abs=0.05)
    assert summarise_greedy([]) == {"prompts": 0}


def test_summarise_k_compares_medians_and_counts_k_times_the_tokens() -> None:
    s = summarise_k([1.0, 2.0, 3.0], [2.0, 3.0, 4.0], k=4, tokens=64)
    assert s["single_wall_s"] == 2.0 and s["k_wall_s"] == 3.0
    assert s["k_over_single"] == 1.5
    assert s["k_aggregate_tok_s"] == pytest.approx(4 * 64 / 3.0, abs=0.05)
    assert summarise_k([], [1.0], 4, 64) == {}


def test_agreement_on_token_ids() -> None:
    reference = {"a": [1, 2, 3], "b": [1, 2, 3], "c": [4, 5], "only_ref": [9]}
    answers = {"a": [1, 2, 3], "b": [1, 2, 4], "c": [4, 5, 6]}
    result = agreement(reference, answers, first_n=2)
    assert result["prompts"] == 3
    assert result["token_identical_rate"] == pytest.approx(1 / 3, abs=0.001)
    assert result["first_n_tokens_rate"] == 1.0
    assert result["mean_first_divergence"] == 2.0
    assert "examples" not in result


# ---- rows ----------------------------------------------------------------------------------------------
def test_missing_engine_names_the_module_or_the_model_files() -> None:
    reason = missing_engine(ROWS["llama.cpp f16"], {})
    assert reason is not None and ("llama_cpp" in reason or "gguf_f16" in reason)
    no_module = Row("x", "ctranslate2", "int8")
    import importlib.util

    if importlib.util.find_spec("ctranslate2") is None:
        assert missing_engine(no_module, {"ct2": "/m"}) == "ctranslate2 is not installed"
    else:
        assert missing_engine(no_module, {"ct2": "/m"}) is None
    assert missing_engine(ROWS["transformers fp32"], {}) is None  # needs only the version folder


def test_table_row_of_a_skipped_and_of_a_measured_row() -> None:
    skipped = table_row(
        {"row": "openvino int8", "status": "skipped", "reason": "openvino_genai is not installed"}
    )
    assert len(skipped) == len(COLUMNS) and skipped[2] == "skipped" and "not installed" in skipped[3]
    measured = table_row(
        {
            "row": "llama.cpp f16",
            "status": "ok",
            "load_avg_before": [0.31, 0.5, 0.6],
            "greedy": {"ttft_p50_s": 0.9, "decode_tok_s": 80.0},
            "k_candidates": {"k_aggregate_tok_s": 70.0, "k_over_single": 3.9, "sampled_together": False},
            "agreement_vs_fp32": {"token_identical_rate": 0.9, "first_n_tokens_rate": 0.96},
            "peak_rss_mb": 700,
        }
    )
    assert measured == ["llama.cpp f16", "0.31", "0.900", "80.0", "70.0 seq", "3.90", "90%", "96%", "700"]


def test_parse_args_needs_a_model_dir_and_knows_every_row() -> None:
    with pytest.raises(SystemExit):
        parse_args([])
    args = parse_args(["--model-dir", "/m", "--rows", "transformers fp32", "ctranslate2 int8 AVX2"])
    assert args.rows == ["transformers fp32", "ctranslate2 int8 AVX2"]
    assert ROWS["ctranslate2 int8 AVX2"].env == (("CT2_FORCE_CPU_ISA", "AVX2"),)
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", "/m", "--rows", "no such row"])


def test_merge_runs_joins_rows_and_scores_them_against_the_reference_answers(tmp_path) -> None:
    import json

    from benchmarks.serving_engines import REFERENCE, answers_path, merge_runs

    answers = tmp_path / "answers"
    answers_path(answers, REFERENCE).write_text(json.dumps({"q1": [1, 2], "q2": [3, 4]}))
    answers_path(answers, "llama.cpp f16").write_text(json.dumps({"q1": [1, 2], "q2": [3, 5]}))
    settings = {"prefix_len": 79, "passage_words": 120}

    def run(rows: list[str], complete: bool) -> str:
        path = tmp_path / f"{rows[0]}.json"
        body = {"settings": settings, "complete": complete, "conversions": {rows[0]: {"seconds": 1, "mb": 2}}}
        path.write_text(json.dumps(body | {"rows": [{"row": r, "status": "ok"} for r in rows]}))
        return str(path)

    merged = merge_runs([run([REFERENCE], True), run(["llama.cpp f16"], False)], answers)
    assert [r["row"] for r in merged["rows"]] == [REFERENCE, "llama.cpp f16"]
    assert merged["rows"][1]["agreement_vs_fp32"]["token_identical_rate"] == 0.5
    assert merged["complete"] is False and set(merged["conversions"]) == {REFERENCE, "llama.cpp f16"}
    other = json.loads(Path(run(["ctranslate2 int8"], True)).read_text())
    other["settings"] = {"prefix_len": 12, "passage_words": 120}
    Path(tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(EngineBenchError, match="different prompt settings"):
        merge_runs([run([REFERENCE], True), str(tmp_path / "other.json")], answers)
