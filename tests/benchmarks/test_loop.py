"""benchmarks/loop.py against the real CLIs it drives: the simulator's and retrain's parsers accept what the loop
passes, the presets clear the retrain's data minimums, and the retrain's outcome is turned into models to evaluate
(an SFT-only version and a final version, published or gated out) without touching the registry's `current`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.loop import (
    FULL,
    QUICK,
    Ledger,
    deltas_table,
    dpo_version,
    heldout_table,
    load_results,
    metric_rows,
    models_to_evaluate,
    parse_args,
    retrain_command,
    save_results,
    simulate_command,
    stage_table,
)


def _retrain_parser() -> argparse.ArgumentParser:
    from training.commands import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd"))
    return parser


def _set_value(preset_retrain: tuple[str, ...], key: str) -> str | None:
    return next((s.split("=", 1)[1] for s in preset_retrain if s.startswith(key + "=")), None)


def test_simulate_command_is_accepted_by_the_simulator(tmp_path: Path) -> None:
    from evaluation.simulate import build_parser

    args = parse_args(["--quick", "--sim-limit", "7", "--correct-fraction", "0.25", "--seed", "3"])
    cmd = simulate_command(tmp_path / "train.json", args)
    assert cmd[1].endswith("scripts/simulate_feedback.py")
    parsed = build_parser().parse_args(cmd[2:])
    assert parsed.qa == tmp_path / "train.json"
    assert (parsed.k_candidates, parsed.limit, parsed.correct_fraction, parsed.seed) == (4, 7, 0.25, 3)
    assert (
        not parsed.only_answerable and parsed.batch
    )  # unanswerables are simulated too (abstention is right)
    assert parsed.batch_size == QUICK.sim_batch
    assert parsed.unanswerable_fraction is None  # as in the file unless asked
    args = parse_args(["--quick", "--unanswerable-fraction", "0.2"])
    assert (
        build_parser().parse_args(simulate_command(tmp_path / "t.json", args)[2:]).unanswerable_fraction
        == 0.2
    )


@pytest.mark.parametrize("quick", [True, False])
def test_retrain_command_parses_and_its_overrides_make_a_valid_config(quick: bool) -> None:
    from training.config import load_config

    args = parse_args(["--quick"] if quick else [])
    cmd = retrain_command(args)
    assert cmd[1:4] == ["-m", "app.cli", "retrain"]
    parsed = _retrain_parser().parse_args(cmd[3:])
    assert parsed.overrides == list(args.preset.retrain)
    cfg = load_config(None, parsed.overrides)  # unknown keys or bad values raise ConfigError
    assert cfg.algorithm == "ppo"  # all stages: sft, rm, ppo (+ merge, gate, publish)
    steps = _set_value(args.preset.retrain, "ppo.total_steps")  # the full preset keeps ppo.yaml's schedule
    assert steps is None or cfg.ppo_config().total_steps == int(steps)
    assert cfg.ppo_config().max_new_tokens == int(_set_value(args.preset.retrain, "ppo.max_new_tokens"))


def test_retrains_start_from_raw_base_and_dpo_reuses_the_export(tmp_path: Path) -> None:
    from training.config import load_config

    args = parse_args(["--quick"])
    ppo = _retrain_parser().parse_args(retrain_command(args)[3:])
    assert ppo.start_from == "base" and not ppo.no_publish  # v0001, not whatever `ragqa setup` made current
    dpo = _retrain_parser().parse_args(retrain_command(args, "dpo", tmp_path / "export")[3:])
    assert dpo.start_from == "base" and dpo.no_publish
    cfg = load_config(None, dpo.overrides)
    assert cfg.algorithm == "dpo" and cfg.data.export_dir == str(tmp_path / "export")
    assert cfg.dpo.max_steps == 2  # the quick preset's cap reaches the DPO trainer too
    resumed = _retrain_parser().parse_args(retrain_command(args, "dpo", tmp_path, resume="r1")[3:])
    assert resumed.resume == "r1" and resumed.overrides == [] and resumed.no_publish


def test_a_loop_from_the_starter_keeps_it_and_retrains_from_it(tmp_path: Path) -> None:
    from benchmarks import loop

    args = parse_args(["--quick", "--start", "starter"])
    assert _retrain_parser().parse_args(retrain_command(args)[3:]).start_from == "starter"
    assert loop.setup_flags("starter") == ["--no-demo"]
    assert loop.setup_flags("base") == ["--no-demo", "--no-starter"]
    registry = _registry_with_base(tmp_path)
    with pytest.raises(SystemExit, match="no starter"):
        loop.start_version(tmp_path, "starter")
    registry.publish_folder(_model_folder(tmp_path / "src-starter"), {"kind": "starter"})
    registry.publish_folder(_model_folder(tmp_path / "src-other"), {"kind": "retrain"})
    assert loop.start_version(tmp_path, "starter") == "v0002"
    assert loop.start_version(tmp_path, "base") == "v0001"
    run = tmp_path / "runs" / "r1"
    _model_folder(run / "sft" / "merged")
    state = _state(run, {"status": "skipped", "reason": "not published: gate failed", "outputs": {}})
    versions, _ = models_to_evaluate(tmp_path, state, [], base="v0002")
    assert versions["base"] == "v0002" and versions["sft"] == "v0004"
    # its report is another experiment's: never over the raw-model report
    assert loop.docs_folder("starter") == loop.DOCS / "from_starter" and loop.docs_folder("base") == loop.DOCS
    assert loop.full_size(parse_args(["--start", "starter", "--no-dpo"]))


def test_user_retrain_args_come_last_and_win() -> None:
    from training.config import load_config

    args = parse_args(["--quick", "--retrain-args", "--set ppo.total_steps=5 --no-publish"])
    parsed = _retrain_parser().parse_args(retrain_command(args)[3:])
    assert parsed.no_publish
    assert load_config(None, parsed.overrides).ppo_config().total_steps == 5


@pytest.mark.parametrize("preset", [QUICK, FULL], ids=["quick", "full"])
def test_presets_give_every_stage_enough_data(preset) -> None:
    """Demonstrations come only from corrections: round(limit * fraction) of them, ~10% go to the test split.

    The minimums are those of default.yaml unless the preset lowers them; each must be cleared with room for
    the hash split and for corrections the store refuses (a candidate that already says the gold answer).
    """
    from training.config import load_config

    cfg = load_config(None, list(preset.retrain))
    corrections = round(preset.sim_limit * preset.correct_fraction)
    if preset is FULL:  # issue #13's sizes
        assert preset.sim_limit >= 400 and corrections >= 100
        assert preset.eval_xquad >= 400 and preset.eval_squad2 >= 200
    assert int(corrections * 0.75) >= cfg.data.min_demonstrations
    # each correction alone gives 4 pairs (correction over every candidate)
    assert int(corrections * 4 * 0.75) >= cfg.data.min_pairs
    assert int(preset.sim_limit * 0.75) >= cfg.data.min_prompts
    assert cfg.sft.max_steps != 0 and cfg.reward.max_steps != 0


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_text("weights")
    return path


def _registry_with_base(home: Path):
    from model_store.registry import ModelRegistry

    registry = ModelRegistry(home / "models")
    registry.publish_folder(_model_folder(home / "src-base"), {"kind": "base"})
    return registry


def _state(run: Path, publish: dict) -> dict:
    return {
        "plan": ["export", "sft", "rm", "ppo", "merge", "evaluate", "publish"],
        "stages": {
            "export": {"status": "done", "seconds": 1.0, "outputs": {}},
            "sft": {"status": "done", "seconds": 2.5, "outputs": {"merged": str(run / "sft" / "merged")}},
            "rm": {"status": "done", "seconds": 3.0, "outputs": {}},
            "ppo": {"status": "failed", "reason": "boom", "outputs": {}},
            "merge": {"status": "done", "seconds": 1.5, "outputs": {"merged": str(run / "merged")}},
            "publish": publish,
        },
    }


def test_gated_out_candidate_is_still_evaluated_and_current_stays_base(tmp_path: Path) -> None:
    registry = _registry_with_base(tmp_path)
    run = tmp_path / "runs" / "r1"
    _model_folder(run / "sft" / "merged")
    _model_folder(run / "merged")
    state = _state(
        run, {"status": "skipped", "reason": "not published: gate failed: win rate", "outputs": {}}
    )
    not_run: list[str] = []
    versions, how = models_to_evaluate(tmp_path, state, not_run)
    assert versions == {"base": "v0001", "sft": "v0002", "final": "v0003"}
    assert registry.current_name() == "v0001"
    assert registry.get("v0002").manifest["kind"] == "sft-only"
    assert registry.get("v0003").manifest["kind"] == "candidate-not-published"
    assert "NOT published" in how and "gate failed" in how and not not_run
    rows = stage_table(state)
    assert [r["stage"] for r in rows][-3:] == ["merge", "evaluate", "publish"]
    assert rows[3] == {"stage": "ppo", "status": "failed", "seconds": None, "reason": "boom"}
    assert rows[5]["status"] == "not run"


def test_published_final_is_used_and_missing_sft_is_reported(tmp_path: Path) -> None:
    registry = _registry_with_base(tmp_path)
    registry.publish_folder(_model_folder(tmp_path / "src-final"), {"kind": "retrain"})  # v0002, current
    run = tmp_path / "runs" / "r1"
    state = _state(run, {"status": "done", "reason": "published", "outputs": {"version": "v0002"}})
    state["stages"]["sft"] = {"status": "skipped", "reason": "too few", "outputs": {}}
    not_run: list[str] = []
    versions, how = models_to_evaluate(tmp_path, state, not_run)
    assert versions == {"base": "v0001", "final": "v0002"}
    assert registry.current_name() == "v0002" and "published by the retrain" in how
    assert len(not_run) == 1 and "SFT-only" in not_run[0]


def test_metric_rows_put_each_model_in_its_column() -> None:
    answers = {"f1": 0.25, "em": 0.0, "mean_answer_words": 30.0}
    report = {
        "metrics": {
            "heldout": {
                "base": {"answers": answers, "retrieval": {}, "latency_ms": {}},
                "final": {"answers": {**answers, "f1": 0.5}, "retrieval": {}, "latency_ms": {}},
            }
        },
        "rm_win_rate": {
            "heldout": {
                "final": {
                    "judge": "reward model",
                    "win_rate_b": 0.75,
                    "mean_reward": 1.0,
                    "mean_reward_base": -1.0,
                }
            }
        },
        "kl_vs_base": {"final": {"kl_per_token": 0.1, "kl_per_answer": 2.0}},
    }
    rows = {r[0]: r[1:] for r in metric_rows(report, "heldout")}
    assert rows["F1"] == (0.25, 0.5)
    assert rows["win rate vs base (reward model)"] == (None, 0.75)
    assert rows["mean RM reward"] == (-1.0, 1.0)
    assert rows["KL vs base, nats/token (both sets)"] == (None, 0.1)
    assert json.dumps(rows)  # JSON-able for report.json


def test_ledger_skips_a_finished_stage_on_the_next_pass(tmp_path: Path) -> None:
    calls: list[str] = []

    def work() -> dict:
        calls.append("ran")
        return {"f1": 0.5}

    first = Ledger(tmp_path / "loop_state.json")
    assert first.stage("eval x base", work) == {"f1": 0.5}
    first.put("retrain run ppo", "r1")
    again = Ledger(tmp_path / "loop_state.json")  # a rerun with the same --out
    assert again.stage("eval x base", work) == {"f1": 0.5} and calls == ["ran"]
    assert again.get("retrain run ppo") == "r1" and "eval x base" in again.walls()

    def killed() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        again.stage("retrain ppo", killed)
    assert not Ledger(tmp_path / "loop_state.json").done("retrain ppo")  # an unfinished stage runs again


def test_retrain_run_id_is_recorded_when_it_starts_so_a_killed_loop_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from benchmarks import loop

    commands: list[str | None] = []

    def dies_after_starting(args, kind, export_dir, resume=None) -> list[str]:
        # like a retrain killed mid-run: it says its run id, never ends normally and leaves no runs/ folder behind
        commands.append(resume)
        return [sys.executable, "-c", "print('starting retrain run r7 from v0001 (x)'); raise SystemExit(9)"]

    monkeypatch.setattr(loop, "retrain_command", dies_after_starting)
    ledger = Ledger(tmp_path / "loop_state.json")
    home = tmp_path / "home"
    loop.retrain("ppo", argparse.Namespace(), {}, tmp_path / "logs", home, ledger, not_run := [])
    assert (
        Ledger(tmp_path / "loop_state.json").get("retrain run ppo") == "r7"
    )  # on disk before the step ended
    assert not_run and "FAILED" in not_run[0]
    loop.retrain("ppo", argparse.Namespace(), {}, tmp_path / "logs", home, ledger, [])
    assert commands == [None, "r7"]  # the second pass resumes the run


def _result(qid: str, f1: float, *, error: str | None = None):
    from evaluation.formats import QAExample
    from evaluation.runner import ExampleResult
    from retrieval.types import Passage

    return ExampleResult(
        QAExample(qid, f"question {qid}?", ("gold",), False),
        answer=f"answer {qid}",
        passages=[Passage(1, "c1", "doc.txt", "The gold passage.", 0.5)],
        scores={"em": float(f1 == 1.0), "f1": f1, "contains": f1 > 0, "abstained": False},
        error=error,
    )


def test_heldout_and_paired_deltas_have_the_report_keys() -> None:
    results = {
        "xquad": {
            "base": [
                _result("a", 0.0),
                _result("b", 0.5),
                _result("c", 0.0),
                _result("d", 0.0, error="boom"),
            ],
            "sft": [_result("a", 0.5), _result("b", 0.5), _result("c", 0.0), _result("d", 0.0)],
            "final": [_result("a", 1.0), _result("b", 1.0), _result("c", 0.5), _result("d", 0.0)],
        }
    }
    metrics = {"xquad": {lb: {"answers": {"em": 0.1, "abstention_recall": None}} for lb in results["xquad"]}}
    kls = {
        "final": {"vs_base": {"kl_per_answer": 3.0, "kl_per_token": 0.2}, "vs_sft": {"kl_per_answer": 1.0}}
    }
    heldout = heldout_table(metrics, results, kls)
    base, final = heldout["xquad"]["base"], heldout["xquad"]["final"]
    assert base["n"] == 3 and base["f1"] == pytest.approx(0.5 / 3)  # the error is not an answer
    assert final["n"] == 4 and final["f1"] == pytest.approx(2.5 / 4)
    assert final["f1_ci"][0] <= final["f1"] <= final["f1_ci"][1]
    assert final["kl_vs_base_per_answer"] == 3.0 and final["kl_vs_sft_per_answer"] == 1.0
    assert base["em"] == 0.1 and base["kl_vs_base_per_answer"] is None
    deltas = deltas_table(results)["xquad"]
    assert set(deltas) == {"final_minus_base", "final_minus_sft"}  # no DPO model: no ppo_minus_dpo
    fb = deltas["final_minus_base"]
    assert fb["n"] == 3 and fb["f1"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)  # paired on a, b, c
    assert fb["ci"][0] <= fb["f1"] <= fb["ci"][1] and fb["ci"][0] > 0  # final beats base on every question
    assert deltas["final_minus_sft"]["n"] == 4
    assert json.dumps({"heldout": heldout, "deltas": deltas}, allow_nan=False)


def test_saved_results_read_back_with_their_passages(tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "\n".join(json.dumps({"id": q, "question": f"question {q}?", "answers": ["gold"]}) for q in "ab")
    )
    rs = [_result("a", 0.5), _result("b", 0.0, error="too long")]
    save_results(tmp_path / "r.jsonl", rs)
    back = load_results(tmp_path / "r.jsonl", qa)
    assert [(r.example.qid, r.answer, r.scores, r.error) for r in back] == [
        (r.example.qid, r.answer, r.scores, r.error) for r in rs
    ]
    assert back[0].passages[0].text == "The gold passage."  # KL and RM scoring re-render the prompt


def test_dpo_model_is_its_merged_candidate_published_unlisted(tmp_path: Path) -> None:
    registry = _registry_with_base(tmp_path)
    run = tmp_path / "runs" / "r2"
    _model_folder(run / "merged")
    state = {"plan": [], "stages": {"merge": {"status": "done", "outputs": {"merged": str(run / "merged")}}}}
    not_run: list[str] = []
    assert dpo_version(tmp_path, state, not_run) == "v0002"
    assert dpo_version(tmp_path, state, not_run) == "v0002"  # a resumed pass finds it, publishes nothing new
    assert registry.current_name() == "v0001" and registry.get("v0002").manifest["kind"] == "dpo"
    assert dpo_version(tmp_path, {}, not_run) is None and "DPO" in not_run[0]


def test_report_files_carry_the_summary_and_the_ci_plot(tmp_path: Path) -> None:
    from benchmarks.loop import write_report

    results = {
        "xquad": {
            "base": [_result("a", 0.0), _result("b", 0.5)],
            "sft": [_result("a", 0.5), _result("b", 0.5)],
            "final": [_result("a", 1.0), _result("b", 0.5)],
            "dpo": [_result("a", 0.5), _result("b", 1.0)],
        }
    }
    answers = {"f1": 0.5, "em": 0.0, "mean_answer_words": 4.0}
    metrics = {
        "xquad": {
            lb: {
                "answers": answers,
                "retrieval": {},
                "latency_ms": {},
                "counts": {"questions": 2, "unanswerable": 0},
            }
            for lb in results["xquad"]
        }
    }
    report = {
        "quick": True,
        "started_at": "now",
        "machine": {
            "cpu": "AMD EPYC",
            "flags": ["avx2", "avx512_bf16"],
            "cpus": 2,
            "usable_cores": 2,
            "torch_threads": "default",
        },
        "load": {"start": 1.0, "simulate": 2.0},
        "split": {"train": ["A"], "heldout": ["B"], "xquad_removed": 3},
        "settings": {
            "sim_limit": 12,
            "correct_fraction": 0.5,
            "k": 2,
            "eval_squad2": 6,
            "eval_xquad": 6,
            "max_new_tokens": 48,
            "kl_limit": 6,
            "retrain": [],
        },
        "versions": {"base": "v0001"},
        "rm_win_rate": {"reward_model": None},
        "heldout": heldout_table(metrics, results, {}),
        "deltas": deltas_table(results),
        "metrics": metrics,
        "wall_s": {"simulate": 10.0, "total": 10.0},
    }
    write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["deltas"]["xquad"]) == {"final_minus_base", "final_minus_sft", "ppo_minus_dpo"}
    assert (
        saved["heldout"]["xquad"]["final"]["n"] == 2 and len(saved["heldout"]["xquad"]["final"]["f1_ci"]) == 2
    )
    md = (tmp_path / "report.md").read_text()
    assert "## xquad: summary" in md and "ppo_minus_dpo" in md and "F1 95% CI" in md
    assert "AMD EPYC (avx2 avx512_bf16), 2 usable cores" in md
    assert (tmp_path / "f1_by_model.png").stat().st_size > 0 and (tmp_path / "wall_time.png").is_file()


def test_only_a_run_at_the_full_size_replaces_the_docs_report() -> None:
    from benchmarks import loop

    assert loop.full_size(loop.parse_args([]))
    assert not loop.full_size(loop.parse_args(["--sim-limit", "200"]))
    assert not loop.full_size(loop.parse_args(["--eval-limit", "100"]))
    assert not loop.full_size(loop.parse_args(["--no-dpo"]))
    assert not loop.full_size(loop.parse_args(["--quick"]))


def test_a_rerun_must_start_from_the_model_its_first_pass_started_from(tmp_path: Path) -> None:
    from benchmarks import loop

    registry = _registry_with_base(tmp_path / "home")
    ledger = Ledger(tmp_path / "out" / "loop_state.json")
    (tmp_path / "out").mkdir()
    loop.check_start(parse_args(["--start", "starter"]), ledger, tmp_path / "home")  # a first pass: recorded
    with pytest.raises(SystemExit, match="started from starter: rerun it with --start starter"):
        loop.check_start(parse_args([]), ledger, tmp_path / "home")
    # a ledger of older code (no "start") after its setup: the home tells (no starter in it: the raw model)
    old = Ledger(tmp_path / "out" / "old.json")
    old.stage("setup", lambda: None)
    with pytest.raises(SystemExit, match="started from base"):
        loop.check_start(parse_args(["--start", "starter"]), old, tmp_path / "home")
    registry.publish_folder(_model_folder(tmp_path / "src-starter"), {"kind": "starter"})
    loop.check_start(
        parse_args(["--start", "starter"]), Ledger(tmp_path / "out" / "old.json"), tmp_path / "home"
    )
    # --eval-only of a starter run's home must say --start starter
    with pytest.raises(SystemExit, match="pass --start starter"):
        loop.check_start(parse_args(["--eval-only"]), Ledger(tmp_path / "out" / "x.json"), tmp_path / "home")


def _report(folder: Path, home: str, started: str, note: str, this_pass: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    report = {"home": home, "run_started_at": started, "started_at": this_pass or started}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text(note)
    (folder / "f1_by_model.png").write_bytes(note.encode())
    return folder


def test_a_full_run_never_replaces_another_runs_docs_report_unless_told(tmp_path: Path, capsys) -> None:
    """The README quotes the reports in docs/results/loop/: a new run's report goes there only when the folder is
    empty, holds this same run's earlier copy (a resumed run), or --replace-docs says so; --docs picks another
    folder. (A starter run once overwrote the committed record this way.)"""
    from benchmarks import loop

    docs = _report(tmp_path / "docs", "/h/old", "t0", "old run")
    new = _report(tmp_path / "out", "/h/new", "t1", "new run")
    assert not loop.publish_docs(new, docs)
    assert (docs / "report.md").read_text() == "old run"
    assert (docs / "f1_by_model.png").read_bytes() == b"old run"
    assert "--replace-docs" in capsys.readouterr().out
    assert loop.publish_docs(new, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.md").read_text() == "new run"
    # a resumed pass starts later but names the run by its first pass's start (the ledger's run_started_at)
    resumed = _report(tmp_path / "out2", "/h/new", "t1", "new run, resumed", this_pass="t9")
    assert loop.publish_docs(resumed, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.md").read_text() == "new run, resumed"
    assert loop.publish_docs(new, docs, replace=True)
    assert (docs / "report.md").read_text() == "new run"
    assert loop.publish_docs(new, new)  # --docs naming the run's own folder: nothing to copy
    old_style = _report(tmp_path / "old_style", "/h/new", "t1", "no run_started_at")
    (old_style / "report.json").write_text(json.dumps({"home": "/h/new", "started_at": "t1"}))
    assert not loop.same_run(old_style / "report.json", new / "report.json")
    args = loop.parse_args(["--start", "starter", "--no-dpo", "--docs", "d", "--replace-docs"])
    assert args.docs == Path("d") and args.replace_docs


def test_the_ledger_keeps_the_first_passs_start_for_the_resumed_ones(tmp_path: Path) -> None:
    """What same_run compares: the first pass records its start, a resumed pass (a new Ledger on the same file, a
    later clock) gets the first one back."""
    from benchmarks import loop

    assert (
        loop.run_started_at(Ledger(tmp_path / "loop_state.json"), "2026-11-29 10:00:00")
        == "2026-11-29 10:00:00"
    )
    assert (
        loop.run_started_at(Ledger(tmp_path / "loop_state.json"), "2026-11-29 12:00:00")
        == "2026-11-29 10:00:00"
    )
