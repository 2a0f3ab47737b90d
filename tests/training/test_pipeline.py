"""End to end on a tiny random Llama with the tiny preset: all stages, publish, resume after a kill, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry
from tests.training.conftest import TINY_CONFIG, write_export
from training.pipeline import RetrainOptions, run_retrain


def options(export: Path, *extra: str, **kw) -> RetrainOptions:
    return RetrainOptions(config=TINY_CONFIG, overrides=[f"data.export_dir={export}", *extra], **kw)


def test_all_stages_publish_and_switch_current(
    tiny_registry: Path, export_dir: Path, ragqa_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.commands import print_report

    lines: list[str] = []
    # publish.gguf=auto (the default config's): the GGUF hook runs inside the publish, before the switch
    state = run_retrain(options(export_dir, "publish.gguf=auto"), say=lines.append)
    registry = ModelRegistry(tiny_registry)
    assert state["status"] == "finished"
    assert [s for s in state["plan"]] == ["export", "sft", "rm", "ppo", "merge", "evaluate", "publish"]
    assert all(state["stages"][s]["status"] == "done" for s in state["plan"]), state["stages"]
    assert registry.current_name() == "v0002"
    manifest = registry.current().manifest
    snapshot = json.loads((export_dir / "manifest.json").read_text())["snapshot_id"]
    assert manifest["parent"] == "v0001"
    assert manifest["started_from"] == "v0001"
    assert manifest["base_model"] == "tiny-random-llama"
    assert manifest["run_id"] == state["run_id"]
    from benchmarks.loop import RUN_STARTED  # the loop benchmark records the run id from this first line

    assert RUN_STARTED.match(lines[0]).group(1) == state["run_id"]
    assert manifest["feedback_snapshot"] == snapshot
    assert manifest["config"]["algorithm"] == "ppo"
    run_dir = ragqa_home / "runs" / state["run_id"]
    assert manifest["config_sha256"] == (run_dir / "config.yaml.sha256").read_text().strip()
    assert set(manifest["metrics"]) >= {"export", "sft", "rm", "ppo", "merge", "evaluate"}
    assert manifest["gate"]["passed"] is True and manifest["gate"]["criteria"]
    from model_store.gguf import converter_available

    if converter_available():  # the llamacpp extra
        gguf = manifest["gguf"]
        # the char-level toy tokenizer is not one the converter knows: recorded, and the publish went on
        assert "failed" in gguf["error"] and "file" not in gguf
    else:
        assert "gguf" not in manifest
    assert (ragqa_home / manifest["reward_model"]["path"] / "config.json").is_file()
    # run folder: per-stage configs/metrics/plots, report embedding the PPO and SFT plots
    assert (run_dir / "ppo" / "ppo_config.yaml").is_file()
    assert (run_dir / "sft" / "metrics.json").is_file() and (run_dir / "rm" / "metrics.json").is_file()
    report = (run_dir / "report.md").read_text()
    for png in (
        "sft/plots/sft_loss.png",
        "rm/plots/rm_curves.png",
        "ppo/plots/reward.png",
        "ppo/plots/kl.png",
    ):
        assert (run_dir / png).is_file()
        assert f"]({png})" in report
    assert "published and made current" in report
    assert any(line.startswith("[7/7] publish: v0002") for line in lines), lines
    print_report(state)  # the CLI's closing summary
    out = capsys.readouterr().out
    assert "candidate vs current (v0001): mean_reward" in out
    assert "gate ok: win_rate" in out and "published and made current" in out
    # the published version is a plain model folder
    assert not (registry.current().path / "adapter_config.json").exists()


def test_killed_run_keeps_current_and_resumes(
    tiny_registry: Path, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import evaluate, sft

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during the evaluate stage")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(evaluate, "evaluate_candidate", killed)
        run_retrain(options(export_dir), say=lambda _: None)
    registry = ModelRegistry(tiny_registry)
    assert registry.current_name() == "v0001"
    assert [v.name for v in registry.versions()] == ["v0001"]
    run_id = sorted(p.name for p in (tiny_registry.parent / "runs").iterdir())[-1]
    state = json.loads((tiny_registry.parent / "runs" / run_id / "state.json").read_text())
    assert state["status"] == "failed"
    assert state["stages"]["evaluate"]["status"] == "failed"
    assert state["stages"]["evaluate"]["seconds"] >= 0  # its time counts against a resume's time budget
    assert all(state["stages"][s]["status"] == "done" for s in ("export", "sft", "rm", "ppo", "merge"))

    def must_not_rerun(*args, **kwargs):
        raise AssertionError("a finished stage ran again on resume")

    monkeypatch.setattr(sft, "train_sft", must_not_rerun)
    lines: list[str] = []
    state = run_retrain(RetrainOptions(resume=run_id), say=lines.append)
    assert state["status"] == "finished"
    assert registry.current_name() == "v0002"
    assert registry.current().manifest["run_id"] == run_id
    assert any("sft: already done" in line for line in lines)
    from benchmarks.loop import RUN_STARTED  # the loop benchmark records the run id from this first line

    assert RUN_STARTED.match(lines[0]).group(1) == run_id


def test_too_little_data_is_refused_clearly(tiny_registry: Path, tmp_path: Path) -> None:
    from training.data import TrainingDataError

    export = write_export(tmp_path / "small", demos=1, pairs=1)
    with pytest.raises(
        TrainingDataError, match=r"too little data: 1 preference pairs .*need at least 2"
    ):  # before any training
        run_retrain(options(export), say=lambda _: None)
    registry = ModelRegistry(tiny_registry)
    assert registry.current_name() == "v0001" and len(registry.versions()) == 1


def test_gate_failure_is_recorded_and_force_on_resume_publishes(
    tiny_registry: Path, export_dir: Path
) -> None:
    # sft + rm only: the candidate is the SFT model, judged by this run's reward model (no PPO: faster)
    state = run_retrain(
        options(export_dir, "gate.min_win_rate=1.01", stages=["sft", "rm"]), say=lambda _: None
    )
    assert state["plan"] == ["export", "sft", "rm", "evaluate", "publish"]
    registry = ModelRegistry(tiny_registry)
    publish = state["stages"]["publish"]
    assert publish["status"] == "skipped"
    assert publish["reason"].startswith("not published: gate failed: FAILED: win_rate")
    assert publish["metrics"]["gate"]["passed"] is False
    assert registry.current_name() == "v0001" and len(registry.versions()) == 1

    state = run_retrain(RetrainOptions(resume=state["run_id"], force=True), say=lambda _: None)
    assert state["stages"]["publish"]["status"] == "done"
    gate = registry.current().manifest["gate"]
    assert registry.current_name() == "v0002"
    assert (
        gate["forced"] is True
        and gate["passed"] is False
        and gate["reasons"][-1] == "published anyway: --force"
    )


@pytest.mark.slow
def test_dpo_alternative_publishes(tiny_registry: Path, export_dir: Path) -> None:
    state = run_retrain(options(export_dir, "algorithm=dpo"), say=lambda _: None)
    assert state["plan"] == ["export", "sft", "rm", "dpo", "merge", "evaluate", "publish"]
    assert state["stages"]["dpo"]["metrics"]["heldout_accuracy"] is not None
    manifest = ModelRegistry(tiny_registry).current().manifest
    assert manifest["algorithm"] == "dpo" and manifest["metrics"]["dpo"]["steps"] == 2


def test_sft_only_without_publishing(tiny_registry: Path, export_dir: Path) -> None:
    state = run_retrain(options(export_dir, stages=["sft"], publish=False), say=lambda _: None)
    assert state["plan"] == ["export", "sft", "evaluate", "publish"]
    assert state["stages"]["evaluate"]["metrics"]["win_rate"] is None  # no reward model in this run
    assert state["stages"]["publish"]["reason"] == "not published: --no-publish"
    assert ModelRegistry(tiny_registry).current_name() == "v0001"


def test_stage_choices_are_checked(tiny_registry: Path, export_dir: Path) -> None:
    from training.pipeline import RetrainError

    with pytest.raises(RetrainError, match="the ppo stage needs the reward model"):
        run_retrain(options(export_dir, stages=["sft", "ppo"]), say=lambda _: None)
    with pytest.raises(RetrainError, match="unknown stage"):
        run_retrain(options(export_dir, stages=["grpo"]), say=lambda _: None)
    assert not (tiny_registry.parent / "runs").exists()  # refused before a run folder was made
