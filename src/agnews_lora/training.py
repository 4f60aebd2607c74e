"""The training recipe: `setup` (budget, data, model, run directory) -> `Loop.fit` -> `Loop.export`.

``train(cfg)`` is exactly those three; the loop itself is in `loop`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, set_seed

from . import checkpoint as ckpt
from . import time_budget
from .budget import ParamCounts, check_budget, count_params
from .config import Config, save_config
from .data import Table, encode, load_splits
from .devices import precision_reason, resolve_precision
from .errors import UserError
from .loop import Loop, OnEval
from .loop_support import STOP_SYNC_EVERY
from .modeling import (
    apply_lora,
    load_base_model,
    load_model_config,
    load_tokenizer,
    meta_peft_model,
)
from .runs import FitResult, Run, default_run_name, load_run_config, unfinished_advice
from .tracking import accelerator_kwargs, check_trackers

__all__ = [
    "FitResult",
    "Loop",
    "OnEval",
    "Run",
    "STOP_SYNC_EVERY",
    "plan_counts",
    "position_limit",
    "setup",
    "train",
]

log = logging.getLogger(__name__)

# position ids start after the padding id in these model types (RoBERTa: 514 positions, 512 usable)
_PADDING_OFFSET_TYPES = {
    "roberta",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "roberta-prelayernorm",
    "data2vec-text",
    "longformer",
    "xmod",
}


def position_limit(model_config) -> int | None:
    """The longest input the model's position embeddings allow (None: no absolute positions)."""
    n = getattr(model_config, "max_position_embeddings", None)
    if (
        not isinstance(n, int)
        or n <= 0
        or getattr(model_config, "position_biased_input", True) is False
    ):
        return None
    if getattr(model_config, "model_type", "") in _PADDING_OFFSET_TYPES:
        return n - ((getattr(model_config, "pad_token_id", None) or 0) + 1)
    return n


def check_max_length(cfg: Config, model_config) -> None:
    """Refuse ``model.max_length`` beyond the model's position limit (long texts would fail)."""
    limit = position_limit(model_config)
    if limit is not None and cfg.model.max_length > limit:
        raise UserError(
            f"model.max_length={cfg.model.max_length} exceeds what '{cfg.model.name_or_path}' "
            f"can read: {limit} tokens (its position limit); set model.max_length <= {limit}"
        )


def plan_counts(cfg: Config, model_config=None) -> ParamCounts:
    """Exact trainable-parameter counts from the model config alone (no weights loaded)."""
    model_config = model_config or load_model_config(cfg.model.name_or_path)
    model_config.num_labels = len(cfg.data.label_names)
    return count_params(meta_peft_model(model_config, cfg.lora))


def train(
    cfg: Config | None,
    resume: str | Path | None = None,
    progress: bool = True,
    on_eval: OnEval | None = None,
) -> Run:
    """Train LoRA under the budget; write the run directory; return the finished `Run`.

    Exactly ``setup(cfg, resume, progress)``, ``Loop.fit(on_eval)`` and ``Loop.export``; see them;
    then ``report.html`` (`run_report.write_run_report`).
    """
    loop = setup(cfg, resume=resume, progress=progress)
    run = loop.export(loop.fit(on_eval=on_eval))
    if run.summary:  # the main process, after export: report.html (a failure only warns)
        from .run_report import try_write_run_report

        try_write_run_report(run.dir)
    return run


def setup(
    cfg: Config | None,
    resume: str | Path | None = None,
    progress: bool = True,
    splits: dict[str, Table] | None = None,
) -> Loop:
    """Everything before the first step: a `Loop` ready to `fit`, its run directory created.

    ``resume``: a run directory: its config.yaml replaces ``cfg``, its last checkpoint is restored.
    ``splits``: ``{"train": Table, "validation": Table}`` instead of the ones ``cfg.data`` names
    (benchmarks, in-memory data). Bad input raises `UserError` before anything is written.
    """
    started = time_budget.clock()  # train.time_budget counts from here
    state = None
    if resume is not None:
        run_dir = Path(resume)
        cfg = load_run_config(run_dir)
        if (run_dir / "summary.json").exists():
            raise UserError(
                f"run '{run_dir}' already finished (summary.json exists); nothing to resume"
            )
        start = ckpt.latest_checkpoint(run_dir / "checkpoints")
        if start is None:
            raise UserError(
                f"run '{run_dir}' has no checkpoint to resume from; {unfinished_advice(run_dir)}"
            )
        state = ckpt.load_checkpoint(start)

    # 1. budget and length limit first: from the model config, before any weights or data are loaded
    model_config = load_model_config(cfg.model.name_or_path)
    check_max_length(cfg, model_config)
    counts = plan_counts(cfg, model_config)
    check_budget(counts, cfg.budget.max_trainable_params)
    trackers = check_trackers(cfg.train.report_to)  # a missing package: before anything is written

    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg.train.precision, "cuda" if cuda else "cpu")
    AcceleratorState._reset_state()  # a second setup() in one process may use another precision
    processes = PartialState(cpu=not cuda)
    if processes.num_processes > 1:  # 'auto' is measured in each process: rank 0's answer holds
        precision = broadcast_object_list([precision], from_process=0)[0]
    if state is None:
        run_dir = Path(cfg.output_dir) / (cfg.run_name or default_run_name(cfg))
    # cpu=True lets Accelerate run multi-process on CPU (gloo) under torchrun / accelerate launch
    acc = Accelerator(
        mixed_precision="no" if precision == "fp32" else precision,
        cpu=not cuda,
        **accelerator_kwargs(trackers, run_dir),
    )
    main = acc.is_main_process
    say = log.info if main else log.debug
    if state is None:  # a new run must not land in an existing one
        _refuse_existing(run_dir)  # every process, each before the barrier: all of them stop
        acc.wait_for_everyone()

    # 2. data and model
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    splits = splits or load_splits(cfg)
    say(counts.describe())
    set_seed(cfg.train.seed)
    t_load = time.perf_counter()
    model = apply_lora(load_base_model(cfg), cfg.lora)
    load_seconds = time.perf_counter() - t_load
    real = count_params(model)
    if real.trainable != counts.trainable:  # never happens: the meta count is what we promised
        raise RuntimeError(
            f"parameter count mismatch: planned {counts.trainable}, built {real.trainable}"
        )

    # 3. the run directory (only now: bad input above leaves nothing behind)
    if state is None and main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        except OSError as e:
            raise UserError(
                f"cannot write the run directory '{run_dir}': {e.strerror or e}"
            ) from None
    acc.wait_for_everyone()

    cache = cfg.data.cache_dir
    train_enc = encode(splits["train"], tokenizer, cfg.model.max_length, cache)
    val_enc = encode(splits["validation"], tokenizer, cfg.model.max_length, cache)
    why = precision_reason(cfg.train.precision, acc.device.type)
    say(
        f"data: {len(train_enc):,} train / {len(val_enc):,} validation rows; "
        f"precision {precision}{f' ({why})' if why else ''}; {acc.num_processes} process(es) on {acc.device}"
    )

    loop = Loop(
        cfg, acc, model, tokenizer, train_enc, val_enc, run_dir, precision, counts, progress
    )
    if loop.fast_dropout is not None:
        where = " and in the attention" if loop.fast_dropout["attention_from"] else ""
        say(
            f"dropout: fast CPU masks in {loop.fast_dropout['dropout_modules']} modules{where} "
            f"(train.fast_cpu_dropout; false restores torch's own)"
        )
    loop.started = started
    if state is not None:
        loop.restore(state)  # keeps the recorded total_steps: a time budget is not re-planned
    elif cfg.train.time_budget is not None:
        try:
            total, line, record = time_budget.budget_schedule(loop, started, load_seconds)
        except UserError:
            if main:  # nothing left behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        loop.set_total_steps(total, record)
        say(line)
    return loop


def _refuse_existing(run_dir: Path) -> None:
    """A run directory we may create: not a file, not inside a file, writable; not a run already."""
    for parent in (run_dir, *run_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(
                    f"cannot create the run directory '{run_dir}': '{parent}' is a file, not a "
                    f"directory; choose another output_dir / run_name"
                )
            if parent != run_dir and not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(
                    f"cannot create the run directory '{run_dir}': '{parent}' is not writable; "
                    f"choose another output_dir"
                )
            break
    if not (run_dir / "config.yaml").exists():
        return
    if (run_dir / "summary.json").exists():
        raise UserError(
            f"run directory '{run_dir}' already exists and holds a finished run; "
            f"choose another run_name"
        )
    raise UserError(
        f"run directory '{run_dir}' already exists with an unfinished run; "
        f"{unfinished_advice(run_dir)}, or choose another run_name"
    )
