"""`ragqa retrain`: export -> SFT -> reward model -> PPO (or DPO, KTO) -> merge -> evaluation gate -> publish.

A run lives in `RAGQA_HOME/runs/<run_id>/`:
  config.yaml (+ .sha256)   the resolved config; a resumed run keeps it
  state.json                every stage's status (done | skipped | failed), outputs, metrics, plots
  export/                   the feedback snapshot used (its snapshot_id goes into the manifest)
  sft/ rm/ ppo/ dpo/ kto/   each stage's checkpoints, adapter, merged model, metrics.json, plots/
  merged/                   the candidate: the policy adapter merged into the SFT model (full precision)
  evaluate/                 gate metrics.json and samples.jsonl (candidate vs current answers)
  report.md                 data, metrics per stage, gate decision, publish outcome, the plots
Stages are recorded in state.json as they finish (written atomically), so a run killed at any point
resumes with `--resume RUN_ID`: finished stages are skipped, the trainers continue from their newest
checkpoint, and the registry's `.partial` + rename publish means a kill never leaves a half-published
version (a version published just before a kill is found again by its run_id and not published twice).

Run state and resume: training/run_state.py; the report: training/report.py; `python -m training.<stage>`:
training/stage_cli.py. Stage results are StageResult records (training/stage_result.py), stored in state.json as dicts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from settings.paths import Paths
from training.config import (
    POLICY_STAGES,
    STAGES,
    TrainConfig,
    config_from_dict,
    config_sha256,
    load_config,
    resolve_device,
    resolved_dict,
    save_config,
    want_4bit,
)
from training.data import ExportData, TrainingDataError, load_export, require
from training.report import stage_summary, write_report
from training.run_state import RetrainError, RunState, new_run_id, now_iso, start_model
from training.stage_result import StageResult


@dataclass
class RetrainOptions:
    """What `ragqa retrain` was asked to do (the CLI flags)."""

    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    resume: str | None = None  # run id
    stages: list[str] | None = None  # training stages (config.STAGES); None = the algorithm's default
    publish: bool = True
    force: bool = False
    start_from: str | None = None  # "base" | "current"; None = config's model.start_from
    dry_run: bool = False


# ---- plan -----------------------------------------------------------------------------------------------------
def training_stages(cfg: TrainConfig, requested: list[str] | None) -> list[str]:
    """The training stages to run, in order. Default: sft, rm, ppo (ppo) or sft, rm, dpo|kto (dpo, kto: the RM
    is the gate's judge). `ppo` needs `rm` in the same run."""
    default = ["sft", "rm", cfg.algorithm]
    chosen = default if requested is None else [s.strip() for s in requested if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise RetrainError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    policies = [s for s in POLICY_STAGES if s in chosen]
    if len(policies) > 1:
        raise RetrainError(
            f"choose one policy stage of {', '.join(POLICY_STAGES)}, not {' and '.join(policies)}"
        )
    if "ppo" in chosen and "rm" not in chosen:
        raise RetrainError(
            "the ppo stage needs the reward model: add rm to --stages (e.g. --stages sft,rm,ppo)"
        )
    return [s for s in STAGES if s in chosen]


def full_plan(stages: list[str]) -> list[str]:
    policy = [s for s in stages if s in POLICY_STAGES]
    return ["export", *stages, *(["merge"] if policy else []), "evaluate", "publish"]


def describe_plan(cfg: TrainConfig, plan: list[str], data: ExportData | None) -> list[str]:
    """Human lines: what each stage will do with this data (used by --dry-run and the run header)."""
    lines = []
    counts = data.counts() if data else {}
    for i, name in enumerate(plan, 1):
        note = ""
        if name == "export":
            note = f"snapshot {data.snapshot_id[:12]}" if data else "feedback store -> snapshot"
        elif name == "sft" and data:
            n = counts["demonstrations_train"]
            ok = n >= cfg.data.min_demonstrations
            note = f"{n} demonstrations" + (
                "" if ok else f" < {cfg.data.min_demonstrations}: will be SKIPPED"
            )
        elif name in ("rm", "dpo") and data:
            n = counts["pairs_train"]
            ok = n >= cfg.data.min_pairs
            note = f"{n} preference pairs" + ("" if ok else f" < {cfg.data.min_pairs}: will REFUSE")
        elif name == "kto" and data:
            n = counts["ratings_train"]
            ok = n >= cfg.data.min_ratings
            note = f"{n} rated answers" + ("" if ok else f" < {cfg.data.min_ratings}: will REFUSE")
        elif name == "ppo" and data:
            n = counts["prompts_train"]
            ok = n >= cfg.data.min_prompts
            note = f"{n} prompts, {cfg.ppo.total_steps} PPO steps" + ("" if ok else " : will REFUSE")
        elif name == "evaluate" and data:
            prompts, source = data.eval_prompts()
            note = f"{min(len(prompts), cfg.gate.num_prompts)} held-out prompts from {source}"
        lines.append(f"  {i}. {name:<8} {note}")
    return lines


# ---- the stages -----------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    """What the stages share: config, paths, the run's folder and state, the models involved."""

    cfg: TrainConfig
    paths: Paths
    run_dir: Path
    state: RunState
    options: RetrainOptions
    data: ExportData | None = None
    deadline: float | None = None  # time.monotonic() by which the budgeted training stages should be done

    def trl_stage_args(self, stage: str) -> dict[str, Any]:
        """The keyword arguments every TRL stage function (train_sft, train_reward_model, ...) takes from a run."""
        return {
            "data": self.data,
            "out_dir": self.run_dir / stage,
            "resume": self.resuming,
            "budget_s": self.budget_s(stage),
        }

    def budget_s(self, stage: str) -> float | None:
        """This stage's seconds of the retrain's time budget (training/time_budget.py); None without one."""
        from training.time_budget import stage_budget_s

        pending = [s for s in self.state.data["plan"] if not self.state.finished(s)]
        return stage_budget_s(self.cfg, stage, pending, self.deadline)

    @property
    def resuming(self) -> bool:
        return self.options.resume is not None

    def output(self, stage: str, key: str) -> Path | None:
        value = self.state.stage(stage).get("outputs", {}).get(key)
        return Path(value) if value else None

    @property
    def start_dir(self) -> Path:
        return Path(self.state.data["start_model"]["path"])

    @property
    def policy_base(self) -> Path:
        """The model the reward model and the policy start from: SFT merged, else the start model."""
        return self.output("sft", "merged") or self.start_dir


def stage_export(ctx: RunContext) -> StageResult:
    from feedback_store import FeedbackStore
    from feedback_store.export import export_snapshot

    out = ctx.run_dir / "export"
    cfg = ctx.cfg
    if cfg.data.export_dir:
        src = Path(cfg.data.export_dir)
        load_export(src)  # validates before copying
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
        source = f"export folder {src}"
    else:
        db = ctx.paths.feedback_db
        if not db.is_file():
            raise TrainingDataError(
                f"no feedback yet ({db} does not exist); ask and rank answers in the app first"
            )
        store = FeedbackStore.open(db, read_only=True)
        try:
            export_snapshot(
                store,
                out,
                test_fraction=cfg.data.test_fraction,
                min_margin=cfg.data.min_margin,
                progress=cfg.progress,
            )
        finally:
            store.close()
        source = f"feedback store {db}"
    data = load_export(out)
    ctx.data = data
    check_enough_data(ctx.cfg, ctx.state.data.get("plan", []), data)
    return StageResult.done(
        outputs={"export": str(out)},
        metrics={"snapshot_id": data.snapshot_id, "source": source, **data.counts()},
    )


def check_enough_data(cfg: TrainConfig, plan: list[str], data: ExportData) -> None:
    """Refuse right after the export, before any training, when a planned stage would refuse later."""
    counts = data.counts()
    if "rm" in plan or "dpo" in plan:
        stage = "reward model" if "rm" in plan else "DPO"
        require(
            counts["pairs_train"],
            cfg.data.min_pairs,
            f"preference pairs in the train split (the {stage} needs them)",
            "Rank more answers in the app, or lower data.min_pairs.",
        )
    if "kto" in plan:
        require(
            counts["ratings_train"],
            cfg.data.min_ratings,
            "rated answers (thumbs up/down) in the train split (KTO needs them)",
            "Rate more answers with 👍/👎 in the app, or lower data.min_ratings.",
        )
    if "ppo" in plan:
        require(
            counts["prompts_train"],
            cfg.data.min_prompts,
            "PPO prompts in the train split",
            "Ask more questions in the app, or lower data.min_prompts.",
        )


def stage_sft(ctx: RunContext) -> StageResult:
    from training import sft

    return sft.train_sft(ctx.cfg, model_dir=ctx.start_dir, **ctx.trl_stage_args("sft"))


def stage_rm(ctx: RunContext) -> StageResult:
    from training import reward

    return reward.train_reward_model(ctx.cfg, model_dir=ctx.policy_base, **ctx.trl_stage_args("rm"))


def stage_ppo(ctx: RunContext) -> StageResult:
    from training.ppo import run_ppo

    prompts = ctx.data.prompts.get("train", [])
    require(
        len(prompts),
        ctx.cfg.data.min_prompts,
        "PPO prompts in the train split",
        "Ask more questions in the app.",
    )
    ppo_cfg = ctx.cfg.ppo
    out = ctx.run_dir / "ppo"
    # Only a checkpoint whose state.json was written is complete (the trainer counts the same way): a kill while
    # the first checkpoint was being written must start PPO afresh, not fail every later resume.
    resume = ctx.resuming and any((out / "checkpoints").glob("step-*/state.json"))
    # The policy PPO hands on is the best on held-out prompts (training/ppo/selection.py); train prompts are
    # no basis for that choice, so without a held-out split the last policy is kept.
    heldout, source = ctx.data.eval_prompts()
    result = run_ppo(
        ppo_cfg,
        policy_dir=ctx.policy_base,
        prompts=prompts,
        out_dir=out,
        reward_dir=ctx.output("rm", "merged"),
        resume=resume,
        heldout_prompts=None if source.startswith("prompts.train") else heldout,
        time_budget_s=ctx.budget_s("ppo"),
    )
    plots = sorted(str(p) for p in (out / "plots").glob("*.png"))
    return StageResult.done(
        outputs={"adapter": str(result.policy_adapter_dir)},
        metrics={"prompts_train": len(prompts), **result.summary},
        plots=plots,
    )


def stage_dpo(ctx: RunContext) -> StageResult:
    from training import dpo

    return dpo.train_dpo(ctx.cfg, model_dir=ctx.policy_base, **ctx.trl_stage_args("dpo"))


def stage_kto(ctx: RunContext) -> StageResult:
    from training import kto

    return kto.train_kto(ctx.cfg, model_dir=ctx.policy_base, **ctx.trl_stage_args("kto"))


def _policy_stage(ctx: RunContext) -> str | None:
    for name in POLICY_STAGES:
        if ctx.state.stage(name).get("status") == "done":
            return name
    return None


def stage_merge(ctx: RunContext) -> StageResult:
    from training import merge

    policy = _policy_stage(ctx)
    if policy is None:
        return StageResult.skipped("no policy adapter to merge")
    device = resolve_device(ctx.cfg)
    qlora = ctx.cfg.ppo.load_in_4bit if policy == "ppo" else want_4bit(ctx.cfg, device)
    n = ctx.cfg.merge.check_prompts
    checks = (
        ctx.data.prompts.get("train", [])[:n]
        or [p["prompt"] for p in ctx.data.pairs.get("train", [])[:n]]
        or [r["prompt"] for r in ctx.data.unpaired.get("train", [])[:n]]
    )
    out = ctx.run_dir / "merged"
    metrics = merge.merge_adapter(
        ctx.policy_base,
        ctx.output(policy, "adapter"),
        out,
        task="causal_lm",
        qlora=qlora,
        check_conversations=checks,
        atol=ctx.cfg.merge.qlora_atol if qlora else ctx.cfg.merge.atol,
        device="cuda" if qlora else "cpu",
    )
    return StageResult.done(outputs={"merged": str(out)}, metrics=metrics)


def candidate_dir(ctx: RunContext) -> Path | None:
    """The model this run would publish: merged policy, else the SFT model; None when nothing was trained."""
    return ctx.output("merge", "merged") or ctx.output("sft", "merged")


def stage_evaluate(ctx: RunContext) -> StageResult:
    from model_store.registry import ModelRegistry
    from training import evaluate
    from training.plots import plot_gate

    candidate = candidate_dir(ctx)
    if candidate is None:
        return StageResult.skipped(
            "nothing was trained in this run (every training stage was skipped or not selected)"
        )
    current = ModelRegistry(ctx.paths.models_dir).current()
    if current is None:
        raise RetrainError("the registry has no current model to compare against")
    prompts, source = ctx.data.eval_prompts()
    out = ctx.run_dir / "evaluate"
    metrics = evaluate.evaluate_candidate(
        ctx.cfg,
        candidate_dir=candidate,
        current_dir=current.path,
        reward_dir=ctx.output("rm", "merged"),
        prompts=prompts,
        out_dir=out,
    )
    metrics = {"current_version": current.name, "prompt_source": source, **metrics}
    plots = []
    if ctx.cfg.plots:
        png = plot_gate(metrics["candidate"], metrics["current"], out / "plots" / "gate.png")
        plots = [str(png)] if png else []
    return StageResult.done(outputs={"samples": str(out / "samples.jsonl")}, metrics=metrics, plots=plots)


def build_manifest(ctx: RunContext, decision: dict[str, Any]) -> dict[str, Any]:
    """What the registry records for a published retrain (the registry adds version, parent, created_at)."""
    stages = ctx.state.data["stages"]
    rm = ctx.output("rm", "merged")
    start = ctx.state.data["start_model"]
    return {
        "kind": "retrain",
        "stage": "publish",
        "run_id": ctx.run_dir.name,
        "base_model": start.get("base_model"),
        "started_from": start["name"],
        "algorithm": ctx.cfg.algorithm,
        "feedback_snapshot": ctx.data.snapshot_id,
        "data": ctx.data.counts(),
        "config": resolved_dict(ctx.cfg),
        "config_sha256": config_sha256(ctx.cfg),
        "metrics": {name: s.get("metrics", {}) for name, s in stages.items() if name != "publish"},
        "stages": {name: s.get("status") for name, s in stages.items()},
        "gate": decision,
        # Relative to RAGQA_HOME (model_store.reward resolves it there): `ragqa compare` finds the RM.
        "reward_model": {"path": os.path.relpath(rm, ctx.paths.home)} if rm else None,
    }


def stage_publish(ctx: RunContext) -> StageResult:
    from model_store.gguf import GgufExportError, gguf_extras
    from model_store.registry import ModelRegistry
    from training import evaluate

    registry = ModelRegistry(ctx.paths.models_dir)
    run_id = ctx.run_dir.name
    for version in registry.versions():  # published just before a kill: record it, do not publish twice
        if version.manifest.get("run_id") == run_id and version.manifest.get("kind") == "retrain":
            if registry.current_name() != version.name and version.manifest.get("gate", {}).get("publish"):
                registry.switch(version.name)
            return _published(
                version.name, version.manifest.get("gate", {}), "found after an interrupted publish"
            )
    evaluated = ctx.state.stage("evaluate")
    if evaluated.get("status") != "done":
        return _not_published(None, evaluated.get("reason") or "the candidate was not evaluated")
    decision = evaluate.gate_decision(evaluated["metrics"], ctx.cfg.gate, force=ctx.options.force)
    if not ctx.options.publish:
        return _not_published(decision, "--no-publish")
    if not decision["publish"]:
        return _not_published(
            decision, "gate failed: " + "; ".join(r for r in decision["reasons"] if r.startswith("FAILED"))
        )
    try:
        version = registry.publish_folder(
            candidate_dir(ctx), build_manifest(ctx, decision), extras=gguf_extras(ctx.cfg.publish.gguf)
        )
    except (
        OSError,
        GgufExportError,
    ) as e:  # disk full, a failed GGUF: the .partial folder is gone, current untouched
        raise RetrainError(
            f"publish failed: {e}. The current version ({registry.current_name()}) is unchanged; fix the cause "
            f"(e.g. free disk space), then `ragqa retrain --resume {run_id}`"
        ) from e
    return _published(version.name, decision, "published and made current")


def _published(name: str, decision: dict[str, Any], why: str) -> StageResult:
    return StageResult.done(outputs={"version": name}, metrics={"gate": decision}, reason=why)


def _not_published(decision: dict[str, Any] | None, why: str) -> StageResult:
    return StageResult.skipped(f"not published: {why}", {"gate": decision})


STAGE_FUNCTIONS: dict[str, Callable[[RunContext], StageResult]] = {
    "export": stage_export,
    "sft": stage_sft,
    "rm": stage_rm,
    "ppo": stage_ppo,
    "dpo": stage_dpo,
    "kto": stage_kto,
    "merge": stage_merge,
    "evaluate": stage_evaluate,
    "publish": stage_publish,
}


# ---- the run --------------------------------------------------------------------------------------------------
def _dry_run(cfg: TrainConfig, plan: list[str], paths: Paths, say: Callable[[str], None]) -> dict[str, Any]:
    """Export into a temporary folder (or read data.export_dir), print the plan with the data counts."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ragqa-dry-run-") as tmp:
        ctx = RunContext(
            cfg, paths, Path(tmp), RunState(Path(tmp), {"stages": {}}), RetrainOptions(dry_run=True)
        )
        stage_export(ctx)
        data = ctx.data
        say("retrain plan (dry run: nothing is trained or published)")
        for line in describe_plan(cfg, plan, data):
            say(line)
        return {"dry_run": True, "plan": plan, "data": data.counts(), "snapshot_id": data.snapshot_id}


def _open_run(options: RetrainOptions, paths: Paths) -> tuple[TrainConfig, Path, RunState]:
    """Resume an existing run, or create a new one (config, plan and start model resolved first)."""
    if options.resume:
        run_dir = paths.runs_dir / options.resume
        if not run_dir.is_dir():
            known = sorted(p.name for p in paths.runs_dir.iterdir()) if paths.runs_dir.is_dir() else []
            raise RetrainError(
                f"no run {options.resume!r} under {paths.runs_dir} (runs: {', '.join(known[-5:]) or 'none'})"
            )
        if options.config or options.overrides:
            raise RetrainError("a resumed run keeps its own config.yaml; drop --config/--set with --resume")
        import yaml

        cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        state = RunState.load(run_dir)
        if state.stage("publish").get("status") == "done":
            raise RetrainError(
                f"run {options.resume} already published {state.stage('publish')['outputs']['version']}"
            )
        if (
            options.stages is not None
            and full_plan(training_stages(cfg, options.stages)) != state.data["plan"]
        ):
            raise RetrainError("a resumed run keeps its stages; drop --stages with --resume")
        return cfg, run_dir, state
    cfg = load_config(options.config, options.overrides)
    if options.start_from:
        cfg.model.start_from = options.start_from
        cfg.validate()
    plan = full_plan(training_stages(cfg, options.stages))
    start = start_model(cfg, paths, cfg.model.start_from)
    run_dir = paths.runs_dir / new_run_id()
    run_dir.mkdir(parents=True)
    state = RunState(
        run_dir,
        {
            "run_id": run_dir.name,
            "created_at": now_iso(),
            "status": "running",
            "plan": plan,
            "config_sha256": save_config(cfg, run_dir / "config.yaml"),
            "start_model": start,
            "stages": {},
        },
    )
    state.save()
    return cfg, run_dir, state


def run_retrain(
    options: RetrainOptions, paths: Paths | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) a retrain and return its state (plus `report` = the report.md path)."""
    paths = paths or Paths.from_env()
    if options.dry_run:
        cfg = load_config(options.config, options.overrides)
        if options.start_from:
            cfg.model.start_from = options.start_from
        return _dry_run(cfg, full_plan(training_stages(cfg, options.stages)), paths, say)

    cfg, run_dir, state = _open_run(options, paths)
    with open(run_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise RetrainError(f"run {run_dir.name} is being run by another process") from e
        return _run_stages(RunContext(cfg, paths, run_dir, state, options), say)


def _run_stages(ctx: RunContext, say: Callable[[str], None]) -> dict[str, Any]:
    state, plan = ctx.state, ctx.state.data["plan"]
    verb = "resuming" if ctx.resuming else "starting"
    say(f"{verb} retrain run {ctx.run_dir.name} from {state.data['start_model']['name']} ({ctx.run_dir})")
    if state.finished("export"):
        ctx.data = load_export(ctx.output("export", "export"))
    for line in describe_plan(ctx.cfg, plan, ctx.data):
        say(line)
    state.data["status"] = "running"
    from training.time_budget import run_deadline

    budget = ctx.cfg.time_budget
    ctx.deadline = run_deadline(budget.minutes, state.data.get("stages", {}), budget.reserve_minutes)
    for i, name in enumerate(plan, 1):
        if state.finished(name):
            say(f"[{i}/{len(plan)}] {name}: already {state.stage(name)['status']} (skipped on resume)")
            continue
        say(f"[{i}/{len(plan)}] {name} ...")
        started = time.perf_counter()
        try:
            from transformers import set_seed

            set_seed(ctx.cfg.seed)
            result = STAGE_FUNCTIONS[name](ctx)
        except BaseException as e:
            state.data["status"] = "failed"
            seconds = round(time.perf_counter() - started, 1)  # spent: a resume's time budget counts it
            state.record(name, {**StageResult.failed(e).to_dict(), "seconds": seconds})
            write_report(ctx)
            if isinstance(e, KeyboardInterrupt | Exception):
                say(f"[{i}/{len(plan)}] {name}: FAILED ({type(e).__name__}: {e})")
                say(f"nothing was published; resume with: ragqa retrain --resume {ctx.run_dir.name}")
            raise
        seconds = round(time.perf_counter() - started, 1)
        state.record(name, {**result.to_dict(), "seconds": seconds})
        say(f"[{i}/{len(plan)}] " + stage_summary(name, result) + f"  ({seconds} s)")
    state.data["status"] = "finished"
    state.save()
    report = write_report(ctx)
    say(f"report: {report}")
    return {**state.data, "report": str(report)}
