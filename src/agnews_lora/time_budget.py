"""``train.time_budget``: parse it, measure the pace, fix the number of steps that fits.

What the budget covers: the wall clock from the start of `training.setup` (config checks, model
load, tokenisation, the pace trial) to ``summary.json`` (every training step, every evaluation,
the export). The Python start-up and imports before it (a few seconds) are not in it.

How: after the model and data are loaded, `measure_pace` runs a few *trial* steps on batches
spread over the first epoch (the first ``TRIAL_WARMUP`` untimed), times an evaluation of a sample
of the validation rows, and then puts the trainable weights, the optimizer and the scheduler back
exactly as they were: the trial leaves no trace in the run (a budgeted run that settles on N steps
is the run ``train.max_steps=N`` gives). `steps_that_fit` then picks the largest step count whose
steps, evaluations (every ``eval_every`` and at the end) and export fit in what is left of the
budget, less a safety margin, and never more than the configured epochs / max_steps. The learning
rate schedule is built for that count, so it decays to its end on time. The count is recorded in
the checkpoints and summary.json: ``--resume`` keeps it and never measures again, and every
process of a multi-process run computes it from the same gathered measurements.

A trial of seconds need not hold for the whole run: a CPU that slows down under sustained load (seen
on an AVX2-only EPYC VM: 18 % under its trial over twenty minutes), a noisy neighbour coming or going.
So at every evaluation `BudgetGuard` projects the end from the pace of the steps since the last
check: an end past the budget shortens the run to the steps that fit, and room for 5 % more steps
lengthens it (never past the configured epochs / max_steps), both keeping the margin of the budget.
A run planned for fewer than four evaluations is also checked, without evaluating, every quarter of
its planned length (`BudgetGuard.every`): a plan shorter than ``eval_every`` is corrected too.
The learning rate then falls from its value there to its end at the new last step
(`optim.build_scheduler`'s re-plans); the re-plans are recorded with the schedule, so a resumed run
rebuilds the same learning rates.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .config_check import parse_duration  # noqa: F401 (re-export; config validates with it)
from .errors import UserError

TRIAL_WARMUP = 2  # untimed trial steps first (allocations, kernel selection)
TRIAL_STEPS = 16  # timed trial steps
EVAL_SAMPLE_ROWS = 256  # validation rows timed to estimate one evaluation
MARGIN = 0.05  # of the time left after the trial, kept free for pace noise and checkpoints
# the export reloads the base model when it was stored in bf16, merges and writes two models and
# the plots: about this many model loads, plus a fixed part (measured on MiniLM: docs/performance)
EXPORT_LOADS = 2.0
EXPORT_FIXED_S = 3.0

clock = time.perf_counter  # the budget's clock (tests replace it)


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Pace:
    """What the trial measured (the slowest process's figures when there are several)."""

    seconds_per_step: float
    timed_steps: int
    eval_seconds: float  # one whole validation evaluation, estimated from a sample
    export_seconds: float  # estimated from the model load time

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def run_seconds(steps: int, pace: Pace, eval_every: int) -> float:
    """Steps + evaluations (every ``eval_every`` steps and at the end) + export, at ``pace``."""
    return (
        steps * pace.seconds_per_step
        + math.ceil(steps / eval_every) * pace.eval_seconds
        + pace.export_seconds
    )


def steps_that_fit(seconds_left: float, pace: Pace, eval_every: int) -> int:
    """The most steps whose `run_seconds` fit in ``seconds_left`` less the `MARGIN` (0: none)."""
    return _fit(seconds_left * (1 - MARGIN), pace, eval_every)


def _fit(usable: float, pace: Pace, eval_every: int) -> int:
    """The most steps whose `run_seconds` fit in ``usable`` seconds (0: none)."""
    per_step = pace.seconds_per_step + pace.eval_seconds / eval_every
    n = max(int((usable - pace.export_seconds) / per_step) + 1, 0)
    while n > 0 and run_seconds(n, pace, eval_every) > usable:
        n -= 1
    return n


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pace(loop, load_seconds: float) -> Pace:
    """Time trial steps and a validation sample on ``loop``; leave its state exactly as it was."""
    from .prediction import batched_logits
    from .weights import load_trainable, trainable_state

    model = loop.acc.unwrap_model(loop.model)
    weights = trainable_state(model)
    optimizer = copy.deepcopy(loop.optimizer.state_dict())
    scheduler = copy.deepcopy(loop.scheduler.state_dict())
    step = loop.step
    n = min(TRIAL_STEPS, loop.steps_per_epoch)
    spread = [i * loop.steps_per_epoch // n for i in range(n)]  # batches of every length
    try:
        for s in spread[:TRIAL_WARMUP]:
            loop.step = s
            loop.train_step()
        _sync(loop.acc.device)
        t0 = time.perf_counter()
        for s in spread:
            loop.step = s
            loop.train_step()
        _sync(loop.acc.device)
        per_step = (time.perf_counter() - t0) / n
        t = loop.cfg.train
        mine = np.arange(loop.rank, len(loop.val_enc), loop.world)
        sample = mine[:: max(1, len(mine) // EVAL_SAMPLE_ROWS)]
        t0 = time.perf_counter()
        if len(sample):
            batched_logits(
                loop.model,
                loop.val_enc,
                t.eval_batch_size,
                loop.pad_id,
                loop.acc.device,
                indices=sample,
                multiple=t.pad_to_multiple_of,
                max_length=loop.cfg.model.max_length,
            )
        _sync(loop.acc.device)
        eval_s = (time.perf_counter() - t0) * len(mine) / max(len(sample), 1)
    finally:
        loop.step = step
        load_trainable(model, weights)
        loop.optimizer.load_state_dict(optimizer)
        loop.scheduler.load_state_dict(scheduler)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.model.train()
    return Pace(per_step, n, eval_s, EXPORT_LOADS * load_seconds + EXPORT_FIXED_S)


def _slowest(loop, values: list[float]) -> list[float]:
    """Each value's maximum over the processes (every process then plans the same steps)."""
    if loop.world == 1:
        return values
    t = torch.tensor([values], dtype=torch.float64, device=loop.acc.device)
    return loop.acc.gather(t).max(dim=0).values.tolist()


def budget_schedule(loop, started: float, load_seconds: float) -> tuple[int, str, dict]:
    """Measure the pace on ``loop`` and fix its length under ``train.time_budget``.

    ``started``: `clock()` when setup began. Returns ``(total steps, the line that
    announces them, the record for the checkpoints and summary.json)``.
    """
    t = loop.cfg.train
    budget_s = parse_duration(t.time_budget)
    (elapsed,) = _slowest(loop, [clock() - started])
    if elapsed >= budget_s:
        raise UserError(
            f"train.time_budget={t.time_budget!r} ({fmt_duration(budget_s)}) is too short: "
            f"loading the model and tokenising alone took {fmt_duration(elapsed)}"
        )
    local = measure_pace(loop, load_seconds)
    per_step, eval_s, export_s, elapsed = _slowest(
        loop,
        [local.seconds_per_step, local.eval_seconds, local.export_seconds, clock() - started],
    )
    pace = Pace(per_step, local.timed_steps, eval_s, export_s)
    total, line = plan_steps(loop, pace, budget_s, elapsed)
    record = {
        "time_budget": t.time_budget,
        "time_budget_seconds": budget_s,
        "configured_steps": loop.total_steps,
        "total_steps": total,
        "seconds_before_training": round(elapsed, 3),
        "estimated_seconds": round(elapsed + run_seconds(total, pace, t.eval_every), 3),
        "pace": pace.to_dict(),
    }
    return total, line, record


def plan_steps(loop, pace: Pace, budget_s: float | None, elapsed_s: float) -> tuple[int, str]:
    """``(total steps, the line that announces them)``; a budget too short is a `UserError`."""
    t = loop.cfg.train
    configured = loop.total_steps
    total = configured
    if budget_s is not None:
        fit = steps_that_fit(budget_s - elapsed_s, pace, t.eval_every)
        if fit < 1:
            need = elapsed_s + run_seconds(1, pace, t.eval_every)
            raise UserError(
                f"train.time_budget={t.time_budget!r} ({fmt_duration(budget_s)}) is too short: "
                f"loading, tokenising and {pace.timed_steps + TRIAL_WARMUP} trial steps took "
                f"{fmt_duration(elapsed_s)}, and one step, an evaluation and the export need "
                f"~{fmt_duration(run_seconds(1, pace, t.eval_every))} more; give it at least "
                f"~{fmt_duration(need / (1 - MARGIN) + 1)}"
            )
        total = min(configured, fit)
    evals = math.ceil(total / t.eval_every)
    line = (
        f"estimated training time: {fmt_duration(total * pace.seconds_per_step)} ({total:,} "
        f"steps at {1 / pace.seconds_per_step:.2f} steps/s measured over {pace.timed_steps} trial "
        f"steps) + {evals} evaluation(s) ~{fmt_duration(evals * pace.eval_seconds)} + export "
        f"~{fmt_duration(pace.export_seconds)}"
    )
    if budget_s is not None:
        which = "all" if total == configured else f"{total:,} of the"
        line += (
            f"; time budget {fmt_duration(budget_s)} ({fmt_duration(elapsed_s)} used by loading "
            f"and the trial): {which} {configured:,} configured steps fit"
        )
    return total, line


class PaceProbe:
    """Without a budget: the estimate from the first real steps (the schedule is already fixed)."""

    def __init__(self, start_step: int, total_steps: int):
        self.start, self.total = start_step, total_steps
        self.seconds = 0.0

    def after_step(self, step: int, seconds: float) -> str | None:
        """Call after each step with its duration; returns the estimate line once."""
        done = step - self.start
        if TRIAL_WARMUP < done <= TRIAL_WARMUP + TRIAL_STEPS:
            self.seconds += seconds
        if done != TRIAL_WARMUP + TRIAL_STEPS:
            return None
        per_step = self.seconds / TRIAL_STEPS
        return (
            f"estimated training time: {fmt_duration((self.total - self.start) * per_step)} "
            f"({self.total - self.start:,} steps at {1 / per_step:.2f} steps/s measured over steps "
            f"{self.start + TRIAL_WARMUP + 1}-{step}), evaluations not included"
        )


def schedule_lengths(total_steps: int, schedule: dict | None) -> tuple[int, list[tuple[int, int]]]:
    """``(the planned step count, its re-plans)`` for `optim.build_scheduler` from a run's record."""
    if not schedule:
        return total_steps, []
    replans = [(r["at_step"], r["total_steps"]) for r in schedule.get("replans", [])]
    return schedule.get("total_steps", total_steps), replans


LENGTHEN_AT = 1.05  # lengthen only for at least 5 % more steps (no churn from pace noise)


class BudgetGuard:
    """A budgeted run's check at each evaluation (and between, for a short plan): re-plan its
    length from the real pace.

    Only for a run planned by `budget_schedule` in this process (a resumed run keeps its length:
    its clock restarted). Every process calls `check` at the same steps (each evaluation, and every
    ``every`` steps) and decides from the same gathered (slowest) figures.
    """

    def __init__(self, loop):
        self.loop = loop
        self._since(loop.step)
        # checks between evaluations: every quarter of the planned length when fewer than four
        # evaluations are planned (a plan shorter than eval_every would otherwise never be checked)
        left = max(loop.total_steps - loop.step, 1)
        self.every = min(loop.cfg.train.eval_every, max(TRIAL_STEPS, math.ceil(left / 4)))

    def _since(self, step: int) -> None:
        """Start the next measurement window at ``step``."""
        self.mark, self.evals, self.eval_seconds = (step, clock()), 0, 0.0

    @staticmethod
    def applies(loop) -> bool:
        s = loop.schedule
        return bool(s) and "time_budget_seconds" in s and loop.resumed_from is None

    @staticmethod
    def now() -> float:
        return clock()

    def check(self, eval_started: float | None = None) -> str | None:
        """After an evaluation (begun at ``now()``) that is not the last, or after a step at a
        multiple of ``every`` (``eval_started`` None): the line saying the run was re-planned, or None."""
        loop, (step0, t0) = self.loop, self.mark
        if eval_started is not None:
            self.evals += 1
            self.eval_seconds += clock() - eval_started
        done = loop.step - step0
        if done < TRIAL_STEPS or loop.step >= loop.total_steps:
            return None  # too few steps to measure (the window goes on), or nothing left
        now, evals, eval_total = clock(), self.evals, self.eval_seconds
        self._since(loop.step)
        s, every = loop.schedule, loop.cfg.train.eval_every
        per_step, eval_s, elapsed = _slowest(
            loop,
            [
                max(now - t0 - eval_total, 0.0) / done,
                max(eval_total / evals if evals else 0.0, s["pace"]["eval_seconds"]),
                now - loop.started,
            ],
        )
        if per_step <= 0:
            return None
        pace = Pace(per_step, done, eval_s, s["pace"]["export_seconds"])
        budget_s, old = s["time_budget_seconds"], loop.total_steps
        # the margin stays what it was when planned: a share of the whole budget, not of what is left
        fit = _fit(budget_s * (1 - MARGIN) - elapsed, pace, every)
        new = min(loop.step + max(fit, 1), s["configured_steps"])
        shorter = new < old and elapsed + run_seconds(old - loop.step, pace, every) > budget_s
        if not (shorter or new >= old * LENGTHEN_AT):
            return None
        _replan(
            loop,
            new,
            {
                "at_step": loop.step,
                "total_steps": new,
                "seconds_per_step": round(per_step, 4),
                "elapsed_seconds": round(elapsed, 3),
            },
        )
        why = (
            f"too slow to finish {old:,} steps"
            if new < old
            else f"room for more than {old:,} steps"
        )
        return (
            f"time budget: the last {done:,} steps ran at {1 / per_step:.2f} steps/s (the trial: "
            f"{1 / s['pace']['seconds_per_step']:.2f}), {why} in {fmt_duration(budget_s)}; the run "
            f"now ends at step {new:,}, where the learning rate reaches its end"
        )


def _replan(loop, total: int, replan: dict) -> None:
    """Set ``loop``'s length to ``total`` steps: its LR goes from where it is to its end there."""
    lrs = [g["lr"] for g in loop.optimizer.param_groups]
    state = loop.scheduler.state_dict()
    replans = [*loop.schedule.get("replans", []), replan]
    loop.set_total_steps(total, {**loop.schedule, "replans": replans})
    loop.scheduler.load_state_dict(state)
    for group, lr in zip(loop.optimizer.param_groups, lrs):
        group["lr"] = lr  # building the scheduler reset it
