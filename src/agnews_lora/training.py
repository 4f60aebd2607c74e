"""The training recipe: setup -> train loop -> save.  Reads top to bottom.

One loop on Accelerate serves one CPU, one GPU and many processes (``torchrun`` /
``accelerate launch``).  Data order is a pure function of (seed, epoch), each process
takes its own micro-batches of it, and dropout is reseeded per (step, process), so a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from . import checkpoint as ckpt
from .batching import collate, train_batches
from .budget import ParamCounts, check_budget, count_params
from .config import Config, save_config
from .data import Encoded, encode, load_splits
from .devices import cast_frozen_linears, resolve_precision
from .errors import TrainingInterrupted, UserError
from .evaluation import classification_metrics
from .fast_dropout import use_fast_dropout
from .modeling import (
    apply_lora,
    load_base_model,
    load_model_config,
    load_tokenizer,
    meta_peft_model,
)
from .prediction import batched_logits
from .runs import MetricsLog, default_run_name, load_run_config

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A finished run: its directory, config and summary."""

    dir: Path
    config: Config
    summary: dict = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float:
        return self.summary["best"]["val_accuracy"]


def plan_counts(cfg: Config) -> ParamCounts:
    """Exact trainable-parameter counts from the model config alone (no weights loaded)."""
    model_config = load_model_config(cfg.model.name_or_path)
    model_config.num_labels = len(cfg.data.label_names)
    return count_params(meta_peft_model(model_config, cfg.lora))


def _optimizer(model, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # on a GPU one fused kernel updates every LoRA matrix (the step is launch-bound there); CPU keeps torch's default
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate, fused=True if device.type == "cuda" else None)


def _scheduler(optimizer, cfg: Config, total_steps: int):
    warmup = int(cfg.train.warmup_ratio * total_steps)
    if cfg.train.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise UserError(f"checkpoint does not match this model (unknown parameter '{missing[0]}')")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))


class _Signals:
    """Turn SIGINT/SIGTERM into a flag checked between steps."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg: Config, resume: str | Path | None = None, progress: bool = True, on_eval=None) -> Run:
    """Train LoRA under the budget; write the run directory; return the finished `Run`.

    ``on_eval(step, metrics)`` is called on the main process after each validation evaluation;
    an exception it raises propagates out of ``train`` (the run is left without summary.json).
    """
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_run_config(run_dir)
        if (run_dir / "summary.json").exists():
            raise UserError(f"run '{run_dir}' already finished (summary.json exists); nothing to resume")
        start = ckpt.latest_checkpoint(run_dir / "checkpoints")
        if start is None:
            raise UserError(f"run '{run_dir}' has no checkpoint to resume from (set train.checkpoint_every)")
        state = ckpt.load_checkpoint(start)
    else:
        state = None

    # 1. budget first: exact counts from the model config, before any weights or data are loaded
    counts = plan_counts(cfg)
    check_budget(counts, cfg.budget.max_trainable_params)

    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, "cuda" if cuda else "cpu")
    AcceleratorState._reset_state()  # a second train() in one process may use another precision
    # cpu=True lets Accelerate run multi-process on CPU (gloo) under torchrun / accelerate launch
    acc = Accelerator(mixed_precision="no" if precision == "fp32" else precision, cpu=not cuda)
    main = acc.is_main_process
    say = log.info if main else log.debug

    # 2. data and model
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    splits = load_splits(cfg)
    say(counts.describe())
    set_seed(cfg.train.seed)
    model = apply_lora(load_base_model(cfg), cfg.lora)
    real = count_params(model)
    if real.trainable != counts.trainable:  # should never happen; the meta count is what we promised
        raise RuntimeError(f"parameter count mismatch: planned {counts.trainable}, built {real.trainable}")

    # 3. the run directory (only now: bad input above leaves nothing behind)
    if state is None:
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
        if main:
            if (run_dir / "config.yaml").exists():
                raise UserError(f"run directory '{run_dir}' already exists; choose another run_name or resume it with --resume")
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
    acc.wait_for_everyone()

    cache = cfg.data.cache_dir
    train_enc = encode(splits["train"], tokenizer, cfg.model.max_length, cache)
    val_enc = encode(splits["validation"], tokenizer, cfg.model.max_length, cache)
    say(f"data: {len(train_enc):,} train / {len(val_enc):,} validation rows; precision {precision}; "
        f"{acc.num_processes} process(es) on {acc.device}")

    loop = _Loop(cfg, acc, model, tokenizer, train_enc, val_enc, run_dir, precision, counts, progress)
    if loop.fast_dropout is not None:
        where = " and in the attention" if loop.fast_dropout["attention_from"] else ""
        say(f"dropout: fast CPU masks in {loop.fast_dropout['dropout_modules']} modules{where} "
            f"(train.fast_cpu_dropout; false restores torch's own)")
    loop.on_eval = on_eval
    if state is not None:
        loop.restore(state)
    return loop.run()


class _Loop:
    """State of one training run; `run()` is the loop itself."""

    def __init__(self, cfg, acc, model, tokenizer, train_enc: Encoded, val_enc: Encoded, run_dir, precision, counts, progress):
        t = cfg.train
        self.cfg, self.acc, self.tokenizer, self.run_dir = cfg, acc, tokenizer, Path(run_dir)
        self.train_enc, self.val_enc, self.precision, self.counts, self.progress = train_enc, val_enc, precision, counts, progress
        self.world, self.rank, self.accum = acc.num_processes, acc.process_index, t.grad_accumulation
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.lengths = train_enc.lengths
        n_batches = len(train_batches(self.lengths, t.per_device_batch_size, t.seed, 0, False))
        self.steps_per_epoch = n_batches // (self.world * self.accum)
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(train_enc)} training rows are fewer than one global batch; lower train.per_device_batch_size")
        self.total_steps = t.max_steps or math.ceil(t.epochs * self.steps_per_epoch)
        self.fast_dropout: dict | None = None  # what use_fast_dropout changed (undone before the export)
        if t.fast_cpu_dropout and acc.device.type == "cpu":
            self.fast_dropout = use_fast_dropout(model)
        if precision == "bf16":  # frozen base weights stored in bf16 once: same numbers, no cast per step
            cast_frozen_linears(model, torch.bfloat16)
        optimizer = _optimizer(model, cfg, acc.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]  # the only ones with gradients to clip
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.model.train()  # every module: from_pretrained leaves the base in eval mode under PEFT's train-mode wrapper
        self.scheduler = _scheduler(self.optimizer, cfg, self.total_steps)
        self.step, self.best_acc, self.best_step, self.best_state, self.bad_evals = 0, -1.0, 0, None, 0
        self.best_metrics: dict = {}
        self.last_eval: dict = {}
        self.finished = False  # True once training is over (set when the export fails and is checkpointed)
        self.train_time = 0.0
        self._epoch_cache: tuple[int, list] | None = None
        self.on_eval = None  # train(on_eval=...): called with (step, metrics) after each evaluation

    # -- state ---------------------------------------------------------------------------------
    def restore(self, state: dict) -> None:
        if state.get("world_size") != self.world or state.get("global_batch") != self.global_batch:
            raise UserError(
                f"checkpoint was written with {state.get('world_size')} process(es) and global batch {state.get('global_batch')}; "
                f"resume with the same setup (now {self.world} process(es), global batch {self.global_batch})"
            )
        _load_trainable(self.acc.unwrap_model(self.model), state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best_acc, self.best_step = state["step"], state["best_acc"], state["best_step"]
        self.best_state, self.bad_evals, self.best_metrics = state["best_state"], state["bad_evals"], state["best_metrics"]
        self.train_time = state.get("train_time", 0.0)
        self.last_eval = state.get("last_eval", {})
        self.resumed_from = state["step"]
        if state.get("finished"):  # stopped (early or at the end) and only the outputs are missing
            self.finished, self.total_steps = True, self.step

    def save_checkpoint(self) -> None:
        if self.acc.is_main_process:
            state = {
                "step": self.step, "trainable": _trainable_state(self.acc.unwrap_model(self.model)),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "best_acc": self.best_acc, "best_step": self.best_step, "best_state": self.best_state,
                "best_metrics": self.best_metrics, "bad_evals": self.bad_evals, "train_time": self.train_time,
                "world_size": self.world, "global_batch": self.global_batch,
                "last_eval": self.last_eval, "finished": self.finished,
            }
            ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, state, self.cfg.train.keep_checkpoints, self.best_step)
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
            self._epoch_cache = (epoch, train_batches(self.lengths, t.per_device_batch_size, t.seed, epoch, t.group_by_length))
        batches = self._epoch_cache[1]
        base = pos * self.world * self.accum
        return [batches[base + i * self.world + self.rank] for i in range(self.accum)]

    def to_device(self, idx: np.ndarray) -> tuple[dict[str, torch.Tensor], int]:
        """(the micro-batch on the device, its real token count, counted on the host)."""
        batch = collate([self.train_enc.ids[i] for i in idx], self.pad_id, self.cfg.train.pad_to_multiple_of, self.cfg.model.max_length)
        batch["labels"] = torch.from_numpy(self.train_enc.labels[idx])
        return {k: v.to(self.acc.device) for k, v in batch.items()}, int(batch["attention_mask"].sum())

    # -- one optimizer step --------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, int, int]:
        """One optimizer step; returns (summed loss as a 0-d device tensor, real tokens, rows).

        Nothing here waits for the device: on a GPU the host queues the next step while this one runs
        (the loss is read only when it is logged).
        """
        torch.manual_seed(self.cfg.train.seed * 1_000_003 + self.step * 101 + self.rank)  # dropout: f(step, rank)
        if not self.model.training:  # set in __init__, restored by evaluation: no walk over every module per step
            self.model.train()
        micro = self.micro_batches(self.step)
        loss_sum, tokens, rows = torch.zeros((), device=self.acc.device), 0, 0
        for i, idx in enumerate(micro):
            batch, n_tokens = self.to_device(idx)
            sync = self.acc.no_sync(self.model) if i < len(micro) - 1 else contextlib.nullcontext()
            with sync:
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
        mine = np.arange(self.rank, len(self.val_enc), self.world)
        idx, logits = batched_logits(self.model, self.val_enc, self.cfg.train.eval_batch_size, self.pad_id, self.acc.device,
                                     indices=mine, multiple=self.cfg.train.pad_to_multiple_of, max_length=self.cfg.model.max_length)
        parts = gather_object([(idx, logits)]) if self.world > 1 else [(idx, logits)]
        all_idx = np.concatenate([p[0] for p in parts])
        all_logits = np.concatenate([p[1] for p in parts])
        order = np.argsort(all_idx)
        if not np.array_equal(all_idx[order], np.arange(len(self.val_enc))):
            raise RuntimeError("validation rows were dropped or duplicated across processes")
        metrics = classification_metrics(self.val_enc.labels, all_logits[order])
        metrics["rows"] = int(len(order))
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> Run:
        t, acc, main = self.cfg.train, self.acc, self.acc.is_main_process
        metrics_log = MetricsLog(self.run_dir / "metrics.jsonl", truncate_after_step=self.step) if main else None
        bar = None
        if main and self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        zero = torch.zeros((), dtype=torch.float64, device=acc.device)
        win_loss, win_tokens, win_rows, win_steps, win_t0 = zero, 0, 0, 0, time.perf_counter()
        stopped_early = False
        with _Signals() as sig:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                loss, tokens, rows = self.train_step()
                self.train_time += time.perf_counter() - t0
                win_loss, win_tokens, win_rows, win_steps = win_loss + loss, win_tokens + tokens, win_rows + rows, win_steps + 1
                s = self.step
                if s % t.log_every == 0 or s == self.total_steps:
                    counts = torch.tensor([win_tokens, win_rows], dtype=torch.float64, device=acc.device)
                    totals = acc.reduce(torch.cat([win_loss.reshape(1), counts]), "sum").tolist()  # the one wait per window
                    dt = time.perf_counter() - win_t0
                    rec = {"step": s, "epoch": round(s / self.steps_per_epoch, 4), "split": "train",
                           "loss": float(totals[0]) / (win_steps * self.world), "lr": self.scheduler.get_last_lr()[0],
                           "samples_per_s": float(totals[2]) / dt, "tokens_per_s": float(totals[1]) / dt}
                    if main:
                        metrics_log.write(rec)
                        if bar:
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", val_acc=f"{self.best_acc:.4f}" if self.best_acc >= 0 else "-",
                                            samples_s=f"{rec['samples_per_s']:.0f}")
                    if not math.isfinite(rec["loss"]):  # every process sees the same reduced loss and stops here
                        if bar:
                            bar.close()
                        if metrics_log:
                            metrics_log.close()
                        raise UserError(
                            f"training diverged: the training loss is {rec['loss']} at step {s}; lower train.learning_rate or "
                            f"use train.precision=fp32 (the curve so far is in {self.run_dir / 'metrics.jsonl'})")
                    win_loss, win_tokens, win_rows, win_steps, win_t0 = zero, 0, 0, 0, time.perf_counter()
                if s % t.eval_every == 0 or s == self.total_steps:
                    stopped_early = self._eval_and_track(metrics_log, bar)
                    win_t0 = time.perf_counter()
                if t.checkpoint_every and s % t.checkpoint_every == 0 and s < self.total_steps:
                    self.save_checkpoint()
                if bar:
                    bar.update(1)
                if self._stop_requested(sig):
                    self.save_checkpoint()
                    if bar:
                        bar.close()
                    raise TrainingInterrupted(self.run_dir, self.step, sig.received or signal.SIGTERM)
                if stopped_early:
                    break
        if bar:
            bar.close()
        if metrics_log:
            metrics_log.close()
        from .export import finish_run

        try:
            return finish_run(self, stopped_early)
        except Exception:  # the trained weights must survive a failed export (full disk, a bug): keep them
            self.finished = True
            self.save_checkpoint()
            log.error(f"training finished, but writing its outputs failed; the trained weights are checkpointed: "
                      f"fix the cause below and run `agnews-lora train --resume {self.run_dir}` to write them")
            raise

    def _eval_and_track(self, metrics_log, bar) -> bool:
        m = self.evaluate()
        improved = m["accuracy"] > self.best_acc
        if improved:
            self.best_acc, self.best_step, self.bad_evals = m["accuracy"], self.step, 0
            self.best_metrics = {f"val_{k}": v for k, v in m.items() if k != "rows"}
            self.best_state = _trainable_state(self.acc.unwrap_model(self.model))
        else:
            self.bad_evals += 1
        self.last_eval = m
        if metrics_log:
            metrics_log.write({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "split": "validation", **m})
        if bar:
            bar.set_postfix(val_acc=f"{m['accuracy']:.4f}", best=f"{self.best_acc:.4f}")
        if self.on_eval is not None and self.acc.is_main_process:
            self.on_eval(self.step, m)
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and self.bad_evals >= patience

    def _stop_requested(self, sig: _Signals) -> bool:
        flag = 1.0 if sig.received else 0.0
        if self.world > 1:  # every process must stop at the same step
            flag = float(self.acc.reduce(torch.tensor([flag], device=self.acc.device), "sum")[0])
        if flag and sig.received is None:
            sig.received = signal.SIGTERM
        return flag > 0
