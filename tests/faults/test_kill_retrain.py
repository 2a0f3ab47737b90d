"""kill -9 of `ragqa retrain` at exact points (PPO checkpoint, merge, publish, current switch), then --resume.

One retrain run on a feedback store filled with hand-made rankings and corrections (tiny random Llama, tiny
config). The real CLI runs in a subprocess under tests/faults/pause_at.py, which freezes it at the point; the test
then SIGKILLs it. After every kill: `current` is still v0001 and loads in the app, no `.partial` folder is listed
by the registry or `ragqa models list`, and the next `ragqa retrain --resume RUN_ID` goes on from there. The
last resume completes and publishes v0002 exactly once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_store.registry import ModelRegistry
from settings.paths import Paths
from tests.faults.conftest import fill_store, ragqa, run_until_paused
from tests.training.conftest import TINY_CONFIG


def _home_with_feedback(home: Path, model_dir: Path) -> ModelRegistry:
    registry = ModelRegistry(home / "models")
    registry.publish(
        lambda out: [shutil.copy2(p, out / p.name) for p in model_dir.iterdir() if p.is_file()],
        {"kind": "base", "base_model": "tiny-random-llama"},
    )
    fill_store(Paths(home).feedback_db)
    return registry


def _assert_current_untouched(home: Path, registry: ModelRegistry) -> None:
    from app.config import AppConfig
    from app.qa import QAService

    assert registry.current_name() == "v0001"
    assert [v.name for v in registry.versions()] == ["v0001"]
    listed = ragqa(home, "models", "list")
    assert listed.returncode == 0 and "v0001" in listed.stdout, listed.stderr
    assert ".partial" not in listed.stdout and "v0002" not in listed.stdout, listed.stdout
    # The app resolves and loads `current`: v0001, whatever the killed run left in models/.
    qa = QAService(AppConfig.load(paths=Paths(home)))
    assert qa.generator.current().version == "v0001"


def _state(home: Path, run_id: str) -> dict:
    return json.loads((home / "runs" / run_id / "state.json").read_text())


# Slow: four kills and resumes of the real CLI (~45 s on a 2-core AVX2-only CPU, where the default run must stay
# under 15 minutes). The default run keeps the kill while writing the first PPO checkpoint (below) and
# tests/training/test_pipeline.py's killed run.
@pytest.mark.slow
def test_retrain_killed_at_each_stage_resumes_and_publishes_once(
    ragqa_home: Path, tiny_model_dir: Path
) -> None:
    home = ragqa_home
    registry = _home_with_feedback(home, tiny_model_dir)

    # 1. During PPO: step 1 checkpointed, step 2's checkpoint half written.
    log = run_until_paused(home, "ppo-checkpoint-2", ["retrain", "--config", str(TINY_CONFIG)])
    (run_id,) = [p.name for p in (home / "runs").iterdir()]
    state = _state(home, run_id)
    assert [s for s, v in state["stages"].items() if v["status"] == "done"] == ["export", "sft", "rm"], log
    assert not (home / "runs" / run_id / "ppo/checkpoints/step-000002/state.json").exists()
    _assert_current_untouched(home, registry)

    # 2. During the merge: merged.partial half written.
    log = run_until_paused(home, "merge-save", ["retrain", "--resume", run_id])
    assert "sft: already done" in log and "ppo" in _state(home, run_id)["stages"]
    assert _state(home, run_id)["stages"]["ppo"]["status"] == "done"
    assert _state(home, run_id)["stages"]["ppo"]["metrics"]["steps"] == 2
    assert (home / "runs" / run_id / "merged.partial").is_dir()
    assert not (home / "runs" / run_id / "merged").exists()
    _assert_current_untouched(home, registry)

    # 3. During publish: v0002.partial complete and fsynced, not yet renamed.
    log = run_until_paused(home, "publish-rename", ["retrain", "--resume", run_id])
    assert (home / "models" / "v0002.partial" / "manifest.json").is_file()
    assert _state(home, run_id)["stages"]["evaluate"]["status"] == "done"
    _assert_current_untouched(home, registry)

    # 4. Between the rename and the switch of `current`: v0002 exists, current is still v0001.
    run_until_paused(home, "current-switch", ["retrain", "--resume", run_id])
    assert not (home / "models" / "v0002.partial").exists()
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]
    assert registry.current_name() == "v0001"
    assert "publish" not in _state(home, run_id)["stages"]

    # 5. The last resume completes: the version published before the kill is found, not published twice.
    done = ragqa(home, "retrain", "--resume", run_id)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "found after an interrupted publish" in done.stdout
    assert registry.current_name() == "v0002"
    assert [v.name for v in registry.versions()] == ["v0001", "v0002"]
    assert registry.current().manifest["run_id"] == run_id
    assert not list((home / "models").glob("*.partial"))
    assert _state(home, run_id)["status"] == "finished"


def test_retrain_killed_while_writing_the_first_ppo_checkpoint_resumes(
    ragqa_home: Path, tiny_model_dir: Path
) -> None:
    """The first checkpoint of PPO half written (no state.json yet): the resume must start PPO over."""
    home = ragqa_home
    registry = _home_with_feedback(home, tiny_model_dir)
    run_until_paused(home, "ppo-checkpoint-1", ["retrain", "--config", str(TINY_CONFIG)])
    (run_id,) = [p.name for p in (home / "runs").iterdir()]
    assert (home / "runs" / run_id / "ppo/checkpoints/step-000001").is_dir()
    assert not (home / "runs" / run_id / "ppo/checkpoints/step-000001/state.json").exists()
    _assert_current_untouched(home, registry)

    done = ragqa(home, "retrain", "--resume", run_id)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert registry.current_name() == "v0002"
