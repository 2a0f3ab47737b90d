"""Fit a retrain's training stages into a time budget (`time_budget.minutes`, default 60).

On a 2-core CPU the default schedules on a few hundred questions of feedback take hours (measured on SmolLM2-135M:
~250 SFT and ~390 reward-model tokens/s, ~20-60 s per PPO step), so a retrain is planned to the clock instead:
  - each budgeted stage (SFT, reward model, the policy stage) gets its share of the time still left when it starts
    (`time_budget.{sft,reward,policy}`, of the shares of the stages still to run), so time a stage does not use
    goes to the next;
  - a TRL stage times its first CALIBRATION_STEPS optimizer steps; when the rest of its schedule would not fit, its
    `max_steps` is cut to what does and its learning-rate schedule is re-planned over the new length (warm-up and
    cosine decay still end where they should); past HARD_STOP times its budget it stops at the next step. Its
    clock starts when the stage does (loading the model counts), and it keeps room for the held-out scoring that
    follows training (EVAL_COST of a training example's time per held-out example: a DPO run of 24 steps was
    followed by ~20 minutes of TRL's evaluation on 171 pairs that no budget had counted);
  - PPO stops before the step that would overrun (training/ppo/trainer.py).
What was cut is recorded in the stage's metrics (`time_budget`) and shown in the run report.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

CALIBRATION_STEPS = 3
HARD_STOP = 1.15  # a run that slows down after calibration still stops near its budget
# Held-out scoring is forward only: about 1/3 of a training example's FLOPs (no activation gradients); DPO's
# reference forward is in both, so its ratio is ~1/2. The larger one is kept: a budget should not overrun.
EVAL_COST = 0.5
SHARE_KEYS = {"sft": "sft", "rm": "reward", "ppo": "policy", "dpo": "policy", "kto": "policy"}


def run_deadline(
    minutes: float | None, stages: dict[str, dict[str, Any]], reserve_minutes: float = 0.0
) -> float | None:
    """The time.monotonic() by which a run's training stages should be done: `minutes` for the whole run less
    `reserve_minutes` for the stages after training (merge, gate, publish); None without a budget. A resumed
    run has already spent the wall time its earlier processes recorded for their stages (finished ones, and one
    that failed or was interrupted), so it gets what is left of the budget, not a fresh one."""
    if not minutes:
        return None
    spent = sum(float(stage.get("seconds") or 0.0) for stage in stages.values())
    return time.monotonic() + 60 * (minutes - reserve_minutes) - spent


def stage_budget_s(cfg: Any, stage: str, pending: list[str], deadline: float | None) -> float | None:
    """Seconds for `stage` out of what is left before `deadline` (time.monotonic), shared with the budgeted
    stages in `pending` (this one included). None without a budget."""
    if deadline is None or stage not in SHARE_KEYS:
        return None
    shares = {s: getattr(cfg.time_budget, SHARE_KEYS[s]) for s in pending if s in SHARE_KEYS}
    left = max(deadline - time.monotonic(), 0.0)
    return left * shares[stage] / sum(shares.values())


class TimeBudget(TrainerCallback):
    """Cuts a transformers Trainer's run to `seconds` counted from `started` (time.monotonic() when the stage
    began; None = when training begins), keeping room for `after_examples` held-out examples scored after it
    (see the module docstring); `record` says what happened."""

    def __init__(
        self,
        trainer: Any,
        seconds: float,
        *,
        started: float | None = None,
        after_examples: int = 0,
        first_step_compiles: bool = False,
    ) -> None:
        self.trainer = trainer
        # A compiled model spends its first step compiling (30-90 s): that step is spent time, but the step rate
        # is measured on the steps after it, or the budget would cut a compiled stage to half its steps.
        self.first_step_compiles = first_step_compiles
        self.first_step_s = 0.0
        self.seconds = seconds
        self.stage_started = started
        self.after_examples = after_examples
        self.reserve = 0.0  # seconds kept for the held-out scoring, estimated at calibration
        self.record: dict[str, Any] = {"budget_s": round(seconds, 1), "cut": False}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started, self.first_step = time.monotonic(), state.global_step  # global_step > 0 on resume
        if self.stage_started is None:
            self.stage_started = self.started
        self.record["planned_steps"] = state.max_steps
        self.record["seconds_before_training"] = round(self.started - self.stage_started, 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        done, training = state.global_step - self.first_step, self._slowest(now - self.started)
        spent = training + (self.started - self.stage_started)
        if done == 1:
            self.first_step_s = training
        if done == CALIBRATION_STEPS:
            per_step = training / done
            if self.first_step_compiles:
                per_step = (training - self.first_step_s) / (done - 1)
                self.record["first_step_s"] = round(self.first_step_s, 1)
            self.reserve = self.after_examples * EVAL_COST * per_step / self._examples_per_step(args)
            fits = state.global_step + int(max(self.seconds - spent - self.reserve, 0.0) / per_step)
            self.record["seconds_per_step"] = round(per_step, 2)
            if self.after_examples:
                self.record.update(heldout_examples=self.after_examples, reserved_s=round(self.reserve, 1))
            if fits < state.max_steps:
                self._cut(state, control, fits)
        if spent + self.reserve > HARD_STOP * self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.record.update(cut=True, hard_stop_at_step=state.global_step)

    def _examples_per_step(self, args: Any) -> int:
        """Training examples in one optimizer step, over all processes."""
        processes = self.trainer.accelerator.num_processes
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * processes

    def _slowest(self, elapsed: float) -> float:
        """The largest `elapsed` over the training processes: every rank must cut and stop at the same step, or
        the ones still training would wait for the others in their next all-reduce."""
        accelerator = self.trainer.accelerator
        if accelerator.num_processes == 1:
            return elapsed
        import torch

        value = torch.tensor([elapsed], dtype=torch.float64, device=accelerator.device)
        return float(accelerator.reduce(value, reduction="max").item())

    def _cut(self, state: Any, control: Any, steps: int) -> None:
        self.record.update(cut=True, steps=steps)
        if self.trainer.is_world_process_zero():  # said now, not only in the stage's metrics at its end
            print(
                f"time budget: {self.seconds:.0f} s for this stage at {self.record['seconds_per_step']} s/step: "
                f"{steps} of {state.max_steps} planned steps",
                flush=True,
            )
        state.max_steps = steps
        for callback in self.trainer.callback_handler.callbacks:  # the progress bar shows the new length
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.total = steps
                bar.refresh()
        if steps <= state.global_step:
            control.should_training_stop = True
            return
        # The schedule was built for the planned length: rebuild it for the new one and bring it to this step.
        trainer = self.trainer
        trainer.lr_scheduler = None
        scheduler = trainer.create_scheduler(num_training_steps=steps, optimizer=trainer.optimizer)
        for _ in range(state.global_step):
            scheduler.step()
