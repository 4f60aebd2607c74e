"""The training loop: one optimizer step, validation, logging, checkpoints, stop signals.

`Loop` is built by `training.setup` (which loads the data and model and creates the run
directory); `Loop.fit` trains and `Loop.export` writes the outputs. One loop on Accelerate serves
one CPU, one GPU and many processes. Data order is a pure function of (seed, epoch), each process
takes its own micro-batches of it, and dropout is reseeded per (step, process), so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import loop_state
from .batching import collate, train_batches
from .budget import ParamCounts
from .config import Config
from .data import Encoded
from .devices import cast_frozen_linears
from .errors import TrainingInterrupted, UserError
from .evaluation import classification_metrics
from .export import export_run
from .fast_dropout import use_fast_dropout
from .loop_support import LogWindow, StopSignals, call_on_eval
from .optim import build_optimizer, build_scheduler
from .prediction import batched_logits
from .runs import FitResult, MetricsLog, Run
from .time_budget import BudgetGuard, PaceProbe, schedule_lengths
from .tracking import Tracking
from .weights import trainable_state

log = logging.getLogger(__name__)

OnEval = Callable[[int, dict], None]


class Loop:
    """One training run's state; `fit` is the loop itself, `export` writes the outputs."""

    def __init__(
        self,
        cfg: Config,
        acc: Accelerator,
        model,
        tokenizer,
        train_enc: Encoded,
        val_enc: Encoded,
        run_dir,
        precision: str,
        counts: ParamCounts,
        progress: bool,
    ):
        t = cfg.train
        self.cfg, self.acc, self.tokenizer, self.run_dir = cfg, acc, tokenizer, Path(run_dir)
        self.train_enc, self.val_enc, self.precision = train_enc, val_enc, precision
        self.counts, self.progress = counts, progress
        self.world, self.rank = acc.num_processes, acc.process_index
        self.accum = t.grad_accumulation
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lengths = train_enc.lengths
        n_batches = len(train_batches(self.lengths, t.per_device_batch_size, t.seed, 0, False))
        self.steps_per_epoch = n_batches // (self.world * self.accum)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(train_enc)} training rows are fewer than one global batch; "
                f"lower train.per_device_batch_size"
            )
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        # what use_fast_dropout changed (undone before the export)
        self.fast_dropout: dict | None = None
        if t.fast_cpu_dropout and acc.device.type == "cpu":
            self.fast_dropout = use_fast_dropout(model)
        # frozen base weights stored in bf16 once: same numbers, no cast per step
        if precision == "bf16":
            cast_frozen_linears(model, torch.bfloat16)
        optimizer = build_optimizer(model, cfg, acc.device)
        # the only parameters with gradients to clip
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # every module: from_pretrained leaves the base in eval mode under PEFT's train-mode wrapper
        self.model.train()
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.step, self.best_acc, self.best_step, self.bad_evals = 0, -1.0, 0, 0
        self.best_state: dict | None = None
        self.best_val_logits: np.ndarray | None = None  # the best evaluation's (validation order)
        self.best_metrics: dict = {}
        self.last_eval: dict = {}
        self.stopped_early = False
        self.resumed_from: int | None = None  # the checkpoint step a resumed run continued from
        # True once training is over (set when the export fails and is checkpointed)
        self.finished = False
        self.train_time = 0.0
        self._epoch_cache: tuple[int, list] | None = None
        # how total_steps was chosen (time_budget.plan_steps); recorded in checkpoints and summary
        self.schedule: dict | None = None
        self.started = time.perf_counter()  # setup() sets when it began (the time budget's start)

    def set_total_steps(self, total: int, schedule: dict | None = None) -> None:
        """Fix the run's length (before its first step, or at a time budget's re-plan); the LR
        schedule is rebuilt to end there."""
        self.total_steps, self.schedule = total, schedule
        planned, replans = schedule_lengths(total, schedule)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, planned, replans)

    # -- state (loop_state: what a checkpoint holds) -------------------------------------------
    def restore(self, state: dict) -> None:
        loop_state.restore(self, state)

    def save_checkpoint(self) -> None:
        if self.acc.is_main_process:
            keep = self.cfg.train.keep_checkpoints
            ckpt.save_checkpoint(
                self.run_dir / "checkpoints",
                self.step,
                loop_state.state(self),
                keep,
                self.best_step,
            )
        self.acc.wait_for_everyone()

    @property
    def global_batch(self) -> int:
        return self.cfg.train.per_device_batch_size * self.world * self.accum

    # -- data ----------------------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[np.ndarray]:
        """This process's micro-batches for optimizer step ``step``."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            t = self.cfg.train
            batches = train_batches(
                self.lengths, t.per_device_batch_size, t.seed, epoch, t.group_by_length
            )
            self._epoch_cache = (epoch, batches)
        batches = self._epoch_cache[1]
        base = pos * self.world * self.accum
        return [batches[base + i * self.world + self.rank] for i in range(self.accum)]

    def to_device(self, idx: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        """(the micro-batch on the device, its real token count, counted on the host)."""
        t = self.cfg.train
        batch = collate(
            [self.train_enc.ids[i] for i in idx],
            self.pad_id,
            t.pad_to_multiple_of,
            self.cfg.model.max_length,
        )
        batch["labels"] = torch.from_numpy(self.train_enc.labels[idx])
        return {k: v.to(self.acc.device) for k, v in batch.items()}, int(
            batch["attention_mask"].sum()
        )

    # -- one optimizer step --------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, int, int]:
        """One optimizer step; returns (summed loss as a 0-d device tensor, real tokens, rows).

        Nothing here waits for the device: on a GPU the host queues the next step while this one
        runs (the loss is read only when it is logged).
        """
        # dropout: a function of (step, rank)
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + self.step * 101 + self.rank)
        # set in __init__, restored by evaluation: no walk over every module per step
        if not self.model.training:
            self.model.train()
        micro = self.micro_batches(self.step)
        loss_sum, tokens, rows = torch.zeros((), device=self.acc.device), 0, 0
        for i, idx in enumerate(micro):
            batch, n_tokens = self.to_device(idx)
            last = i == len(micro) - 1
            with contextlib.nullcontext() if last else self.acc.no_sync(self.model):
                loss = self.model(**batch).loss / len(micro)
                self.acc.backward(loss)
            loss_sum += loss.detach().float()
            tokens += n_tokens
            rows += len(idx)
        if self.cfg.train.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.trainable, self.cfg.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum, tokens, rows

    # -- evaluation on the validation split, sharded across processes --------------------------
    def evaluate(self) -> dict:
        t = self.cfg.train
        mine = np.arange(self.rank, len(self.val_enc), self.world)
        idx, logits = batched_logits(
            self.model,
            self.val_enc,
            t.eval_batch_size,
            self.pad_id,
            self.acc.device,
            indices=mine,
            multiple=t.pad_to_multiple_of,
            max_length=self.cfg.model.max_length,
        )
        parts = gather_object([(idx, logits)]) if self.world > 1 else [(idx, logits)]
        all_idx = np.concatenate([p[0] for p in parts])
        all_logits = np.concatenate([p[1] for p in parts])
        order = np.argsort(all_idx)
        if not np.array_equal(all_idx[order], np.arange(len(self.val_enc))):
            raise RuntimeError("validation rows were dropped or duplicated across processes")
        self.val_logits = all_logits[order]
        metrics = classification_metrics(self.val_enc.labels, self.val_logits)
        metrics["rows"] = int(len(order))
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, on_eval: OnEval | None = None) -> FitResult:
        """Train from the current step to ``total_steps`` (or an early stop); return the outcome.

        ``on_eval(step, metrics)`` runs on the main process after every validation evaluation,
        with the record written to metrics.jsonl (``accuracy``, ``macro_f1``, ``loss``, ``rows``,
        ...). An exception it raises ends the run and propagates from here (no checkpoint is
        written; the run directory keeps its metrics.jsonl, without a summary.json).

        The progress bar and metrics.jsonl are closed exactly once, however the loop ends
        (finished, diverged, interrupted, a failing ``on_eval``). SIGINT / SIGTERM end it at a step
        boundary with a checkpoint and `TrainingInterrupted`: with one process after the current
        step; with several, the processes agree on it every ``STOP_SYNC_EVERY`` steps (and at the
        last step), so the stop comes up to ``STOP_SYNC_EVERY - 1`` steps after the signal.
        """
        main = self.acc.is_main_process
        metrics_log = None
        bar = None
        # train.report_to: every metrics.jsonl record also goes to the trackers (main process)
        self.tracking = Tracking(self.acc, self.cfg, self.run_dir)
        try:
            if main:
                metrics_log = MetricsLog(
                    self.run_dir / "metrics.jsonl", truncate_after_step=self.step
                )
                self.tracking.start()
                if self.progress:
                    bar = tqdm(
                        total=self.total_steps,
                        initial=self.step,
                        desc="train",
                        unit="step",
                        dynamic_ncols=True,
                    )
            with StopSignals() as sig:
                self._steps(sig, metrics_log, bar, on_eval)
        finally:
            if bar is not None:
                bar.close()
            if metrics_log is not None:
                metrics_log.close()
            self.tracking.end()
        return self.result()

    def _steps(
        self, sig: StopSignals, metrics_log: MetricsLog | None, bar, on_eval: OnEval | None
    ) -> None:
        t = self.cfg.train
        window = LogWindow(self.acc.device)
        # the pace was measured before the start (a time budget) or is measured now
        probe = PaceProbe(self.step, self.total_steps) if self.schedule is None else None
        guard = BudgetGuard(self) if BudgetGuard.applies(self) else None
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            window.add(*self.train_step())
            self.train_time += time.perf_counter() - t0
            said = (
                probe
                and self.acc.is_main_process
                and probe.after_step(self.step, time.perf_counter() - t0)
            )
            if said:
                log.info(said)
            s, last = self.step, self.step == self.total_steps
            if s % t.log_every == 0 or last:
                self._log_window(window, metrics_log, bar)
                window.reset()
            said = None
            if s % t.eval_every == 0 or last:
                t_eval, eval_started = time.perf_counter(), guard and guard.now()
                self.stopped_early = self._eval_and_track(metrics_log, bar, on_eval)
                window.exclude(time.perf_counter() - t_eval)
                said = guard and not (last or self.stopped_early) and guard.check(eval_started)
            elif guard and s % guard.every == 0:
                said = guard.check()  # a short plan: its pace is checked between evaluations too
            if said and self.acc.is_main_process:
                log.info(said)
                if bar is not None:
                    bar.total = self.total_steps
                    bar.refresh()
            if t.checkpoint_every and s % t.checkpoint_every == 0 and not last:
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
            if sig.agreed(self.acc, self.step, last):
                self.save_checkpoint()
                raise TrainingInterrupted(self.run_dir, self.step, sig.received or signal.SIGTERM)
            if self.stopped_early:
                break

    def _log_window(self, w: LogWindow, metrics_log: MetricsLog | None, bar) -> None:
        """Reduce the window across processes (the one wait for the device per window); log it."""
        counts = torch.tensor([w.tokens, w.rows], dtype=torch.float64, device=self.acc.device)
        totals = self.acc.reduce(torch.cat([w.loss.reshape(1), counts]), "sum").tolist()
        dt = time.perf_counter() - w.t0
        s = self.step
        rec = {
            "step": s,
            "epoch": round(s / self.steps_per_epoch, 4),
            "split": "train",
            "loss": float(totals[0]) / (w.steps * self.world),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": float(totals[2]) / dt,
            "tokens_per_s": float(totals[1]) / dt,
        }
        if metrics_log is not None:
            metrics_log.write(rec)
            self.tracking.log(rec)
        if bar is not None:
            best = f"{self.best_acc:.4f}" if self.best_acc >= 0 else "-"
            bar.set_postfix(
                loss=f"{rec['loss']:.4f}", val_acc=best, samples_s=f"{rec['samples_per_s']:.0f}"
            )
        # every process sees the same reduced loss and stops here
        if not math.isfinite(rec["loss"]):
            raise UserError(
                f"training diverged: the training loss is {rec['loss']} at step {s}; lower "
                f"train.learning_rate or use train.precision=fp32 (the curve so far is in "
                f"{self.run_dir / 'metrics.jsonl'})"
            )

    def _eval_and_track(self, metrics_log: MetricsLog | None, bar, on_eval: OnEval | None) -> bool:
        m = self.evaluate()
        if m["accuracy"] > self.best_acc:
            self.best_acc, self.best_step, self.bad_evals = m["accuracy"], self.step, 0
            self.best_metrics = {f"val_{k}": v for k, v in m.items() if k != "rows"}
            self.best_state = trainable_state(self.acc.unwrap_model(self.model))
            self.best_val_logits = self.val_logits
        else:
            self.bad_evals += 1
        self.last_eval = m
        rec = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "split": "validation",
            **m,
        }
        if metrics_log is not None:
            metrics_log.write(rec)
            self.tracking.log(rec)
        if bar is not None:
            bar.set_postfix(val_acc=f"{m['accuracy']:.4f}", best=f"{self.best_acc:.4f}")
        if on_eval is not None:
            call_on_eval(self.acc, on_eval, self.step, rec)
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    # -- the outcome ---------------------------------------------------------------------------
    def result(self) -> FitResult:
        """The loop's outcome so far, as `export_run` takes it."""
        return loop_state.fit_result(self)

    def export(self, fit: FitResult) -> Run:
        """Write adapter/, merged/, plots/, summary.json (main process); return the finished `Run`.

        If writing fails (a full disk, a bug), the trained weights are checkpointed first, so that
        ``train --resume`` writes the outputs without training again.
        """
        self.acc.wait_for_everyone()
        summary: dict = {}
        if self.acc.is_main_process:
            try:
                model = self.acc.unwrap_model(self.model, keep_fp32_wrapper=False)
                summary = export_run(
                    model, self.tokenizer, self.run_dir, self.cfg, self.counts, fit
                )
            except Exception:
                self.finished = True
                self.save_checkpoint()  # its wait pairs with the other processes' one below
                log.error(
                    f"training finished, but writing its outputs failed; the trained weights are "
                    f"checkpointed: fix the cause below and run `agnews-lora train --resume "
                    f"{self.run_dir}` to write them"
                )
                raise
        self.acc.wait_for_everyone()
        return Run(self.run_dir, self.cfg, summary)
