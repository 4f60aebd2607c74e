"""What a training `Loop` saves and restores (its checkpoint state), and its outcome (`FitResult`).

Kept beside `loop` so that the loop itself stays the readable step / evaluate / log cycle; the
checkpoint files themselves are `agnews_lora.checkpoint`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UserError
from .runs import FitResult
from .weights import load_trainable, trainable_state

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Loop


def state(loop: Loop) -> dict:
    """Everything a resumed run needs: trainable weights, optimizer, schedule, progress, best."""
    return {
        "step": loop.step,
        "trainable": trainable_state(loop.acc.unwrap_model(loop.model)),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "best_acc": loop.best_acc,
        "best_step": loop.best_step,
        "best_state": loop.best_state,
        "best_metrics": loop.best_metrics,
        "bad_evals": loop.bad_evals,
        "train_time": loop.train_time,
        "world_size": loop.world,
        "global_batch": loop.global_batch,
        "last_eval": loop.last_eval,
        "finished": loop.finished,
        "stopped_early": loop.stopped_early,
        "total_steps": loop.total_steps,
        "schedule": loop.schedule,
    }


def restore(loop: Loop, state: dict) -> None:
    """Put a checkpoint's `state` back into ``loop`` (same processes and global batch only)."""
    if state.get("world_size") != loop.world or state.get("global_batch") != loop.global_batch:
        raise UserError(
            f"checkpoint was written with {state.get('world_size')} process(es) and global "
            f"batch {state.get('global_batch')}; resume with the same setup (now {loop.world} "
            f"process(es), global batch {loop.global_batch})"
        )
    load_trainable(loop.acc.unwrap_model(loop.model), state["trainable"])
    # the recorded length (a time budget's choice), never re-planned; the schedule is rebuilt
    # before the optimizer's state comes back (building it resets the optimizer's lr)
    if "total_steps" in state:
        loop.set_total_steps(state["total_steps"], state.get("schedule"))
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    loop.step, loop.best_acc, loop.best_step = (
        state["step"],
        state["best_acc"],
        state["best_step"],
    )
    loop.best_state, loop.bad_evals = state["best_state"], state["bad_evals"]
    loop.best_metrics = state["best_metrics"]
    loop.train_time = state.get("train_time", 0.0)
    loop.last_eval = state.get("last_eval", {})
    loop.stopped_early = state.get("stopped_early", False)
    loop.resumed_from = state["step"]
    if state.get("finished"):  # stopped (early or at the end) and only the outputs are missing
        loop.finished, loop.total_steps = True, loop.step


def fit_result(loop: Loop) -> FitResult:
    """The loop's outcome so far, as `export_run` takes it."""
    t = loop.cfg.train
    return FitResult(
        steps=loop.step,
        total_steps=loop.total_steps,
        steps_per_epoch=loop.steps_per_epoch,
        stopped_early=loop.stopped_early,
        resumed_from=loop.resumed_from,
        best_step=loop.best_step,
        best_accuracy=loop.best_acc,
        best_metrics=loop.best_metrics,
        best_state=loop.best_state,
        best_val_logits=loop.best_val_logits,
        validation_sha256=loop.val_enc.rows_sha256,
        final_validation=loop.last_eval,
        train_seconds=loop.train_time,
        train_rows=len(loop.train_enc),
        validation_rows=len(loop.val_enc),
        world_size=loop.world,
        per_device_batch_size=t.per_device_batch_size,
        grad_accumulation=t.grad_accumulation,
        global_batch_size=loop.global_batch,
        precision=loop.precision,
        device=str(loop.acc.device),
        fast_dropout=loop.fast_dropout,
        schedule=loop.schedule,
        started=loop.started,
    )
