"""The end of a training run: best weights back in, adapter + merged model + plots + summary out.

Everything is written under temporary names and renamed into place; ``summary.json`` is
written last, so a run directory with a summary is a complete one.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import accelerate
import datasets
import numpy as np
import peft
import torch
import transformers

from . import __version__, model_card
from .budget import ParamCounts
from .config import Config
from .devices import has_cast_linears, precision_reason
from .fast_dropout import restore_dropout
from .machine import machine_info
from .modeling import apply_lora, load_base_model
from .plotting import plot_training_curves
from .runs import VAL_LOGITS, FitResult, read_metrics, write_json
from .weights import load_trainable, trainable_state


def library_versions() -> dict:
    return {
        "agnews_lora": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "python": platform.python_version(),
    }


def _save_dir(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def save_adapter_and_merged(
    peft_model, tokenizer, run_dir: Path, base_model_id: str, card=None
) -> None:
    """``adapter/``: adapter (LoRA + head) + tokenizer; ``merged/``: plain transformers model.

    ``card(folder, kind)`` writes the model card into each folder before it is renamed into place.
    """
    peft_model.peft_config[
        "default"
    ].base_model_name_or_path = base_model_id  # PEFT leaves None for local builds

    def write_adapter(d: Path) -> None:
        # We never resize or adapt the embeddings, so PEFT need not look up the base model's config
        # (for a Hub id a network call, for a `package:`/`offline:` spec a warning) to decide that.
        peft_model.save_pretrained(d, save_embedding_layers=False)
        tokenizer.save_pretrained(d)
        if card is not None:
            card(d, "adapter")

    _save_dir(run_dir / "adapter", write_adapter)
    merged = peft_model.merge_and_unload()
    merged = merged.to(torch.float32)

    def write_merged(d: Path) -> None:
        merged.save_pretrained(d)
        tokenizer.save_pretrained(d)
        if card is not None:
            card(d, "merged")

    _save_dir(run_dir / "merged", write_merged)


def fp32_for_export(cfg: Config, peft_model):
    """The trained PEFT model with the base weights in fp32 (the loop may keep them in bf16).

    A bf16-stored base is rebuilt from the pre-trained weights and gets the trained LoRA matrices
    and head, so that ``merged/`` is exactly base + LoRA update in fp32, as a user merging the
    adapter gets.
    """
    if not has_cast_linears(peft_model):
        return peft_model
    state = trainable_state(peft_model)
    fresh = apply_lora(load_base_model(cfg), cfg.lora)
    load_trainable(fresh, state)
    return fresh


def save_val_logits(run_dir: Path, logits) -> None:
    """``validation_logits.npy``: the logits behind ``best.val_accuracy``, which the run report
    reuses instead of predicting the validation rows again; removed (the report then predicts)
    when this session did not see the best evaluation (it happened before a resume)."""
    path = run_dir / VAL_LOGITS
    if logits is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, np.asarray(logits, dtype=np.float32), allow_pickle=False)
    tmp.replace(path)


def export_run(
    model, tokenizer, run_dir: Path, cfg: Config, counts: ParamCounts, fit: FitResult
) -> dict:
    """Write ``adapter/``, ``merged/`` (each with its model card), ``plots/`` and, last,
    ``summary.json``; return the summary.

    ``model`` is the trained PEFT model (unwrapped, on any device); its trainable weights are
    replaced by ``fit.best_state`` and its fast dropout is undone. Called on the main process only;
    nothing here knows the training loop.
    """
    run_dir = Path(run_dir)
    if fit.best_state is not None:
        load_trainable(model, fit.best_state)
    if fit.fast_dropout is not None:  # the saved model uses torch's own dropout and attention
        restore_dropout(model, fit.fast_dropout)
    model = fp32_for_export(cfg, model)
    rows = read_metrics(run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    total_tokens = sum(r["tokens_per_s"] for r in train_rows)  # informative only
    summary = {
        "run_name": run_dir.name,
        "base_model": cfg.model.name_or_path,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": counts.to_dict(),
        "budget": {
            "max_trainable_params": cfg.budget.max_trainable_params,
            "used": counts.trainable,
            "fraction": counts.trainable / cfg.budget.max_trainable_params,
        },
        "best": {"step": fit.best_step, "val_accuracy": fit.best_accuracy, **fit.best_metrics},
        "final_validation": fit.final_validation,
        "steps": fit.steps,
        "total_steps": fit.total_steps,
        "steps_per_epoch": fit.steps_per_epoch,
        "epochs": round(fit.steps / fit.steps_per_epoch, 4),
        "stopped_early": fit.stopped_early,
        "resumed_from_step": fit.resumed_from,
        "train_rows": fit.train_rows,
        "validation_rows": fit.validation_rows,
        "validation_sha256": fit.validation_sha256,  # which rows (the run report checks it)
        "world_size": fit.world_size,
        "per_device_batch_size": fit.per_device_batch_size,
        "grad_accumulation": fit.grad_accumulation,
        "global_batch_size": fit.global_batch_size,
        "precision": fit.precision,
        # why 'auto' chose it on a CPU (the probe this process ran), e.g. bf16 measured slower here
        "precision_reason": precision_reason(cfg.train.precision, fit.device.split(":")[0]) or None,
        "device": fit.device,
        "dropout": "fast-cpu (numpy PCG64 masks)" if fit.fast_dropout is not None else "torch",
        "timings": {
            "train_seconds": round(fit.train_seconds, 3),
            "train_samples_per_s": round(
                fit.steps * fit.global_batch_size / max(fit.train_seconds, 1e-9), 2
            ),
            "mean_logged_tokens_per_s": round(total_tokens / max(len(train_rows), 1), 1),
        },
        "versions": library_versions(),
        "machine": machine_info(),
        "command": model_card.current_command(),  # the CLI's command line (None from Python)
    }
    if fit.schedule is not None:  # the step count a time budget chose, and what it was based on
        summary["schedule"] = fit.schedule
    test = model_card.held_out_metrics(run_dir)

    def card(folder: Path, kind: str) -> None:
        model_card.write_card(folder, kind, cfg, summary, test)

    save_adapter_and_merged(model, tokenizer, run_dir, cfg.model.name_or_path, card=card)
    plot_training_curves(rows, run_dir / "plots")
    save_val_logits(run_dir, fit.best_val_logits)
    if fit.started is not None:  # this session: setup's start to here (the time budget's span)
        summary["timings"]["wall_seconds"] = round(time.perf_counter() - fit.started, 3)
    write_json(run_dir / "summary.json", summary)
    return summary
