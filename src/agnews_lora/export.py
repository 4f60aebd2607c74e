"""The end of a training run: best weights back in, adapter + merged model + plots + summary out.

Everything is written under temporary names and renamed into place; ``summary.json`` is
written last, so a run directory with a summary is a complete one.
"""

from __future__ import annotations

import platform
import shutil
import time
from pathlib import Path

import torch

from .plotting import plot_training_curves
from .runs import read_metrics, write_json


def library_versions() -> dict:
    import accelerate
    import datasets
    import peft
    import transformers

    from . import __version__

    return {"agnews_lora": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "datasets": datasets.__version__,
            "python": platform.python_version()}


def _save_dir(target: Path, write) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def save_adapter_and_merged(peft_model, tokenizer, run_dir: Path, base_model_id: str) -> None:
    """``adapter/``: PEFT adapter (LoRA + classifier head) + tokenizer; ``merged/``: plain transformers model."""
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id  # PEFT leaves None for local builds

    def write_adapter(d: Path) -> None:
        peft_model.save_pretrained(d)
        tokenizer.save_pretrained(d)

    _save_dir(run_dir / "adapter", write_adapter)
    merged = peft_model.merge_and_unload()
    merged = merged.to(torch.float32)

    def write_merged(d: Path) -> None:
        merged.save_pretrained(d)
        tokenizer.save_pretrained(d)

    _save_dir(run_dir / "merged", write_merged)


def fp32_for_export(cfg, peft_model):
    """The trained PEFT model with the base weights in fp32 (the training loop may keep them in bf16).

    A bf16-stored base is rebuilt from the pre-trained weights and gets the trained LoRA matrices and
    head, so that ``merged/`` is exactly base + LoRA update in fp32, as a user merging the adapter gets.
    """
    from .devices import has_cast_linears
    from .modeling import apply_lora, load_base_model
    from .training import _load_trainable, _trainable_state

    if not has_cast_linears(peft_model):
        return peft_model
    state = _trainable_state(peft_model)
    fresh = apply_lora(load_base_model(cfg), cfg.lora)
    _load_trainable(fresh, state)
    return fresh


def finish_run(loop, stopped_early: bool):
    """Called by every process at the end of `training._Loop.run`; the main process writes."""
    from .fast_dropout import restore_dropout
    from .training import Run, _load_trainable

    acc, cfg, run_dir = loop.acc, loop.cfg, loop.run_dir
    acc.wait_for_everyone()
    summary: dict = {}
    if acc.is_main_process:
        model = acc.unwrap_model(loop.model, keep_fp32_wrapper=False)
        if loop.best_state is not None:
            _load_trainable(model, loop.best_state)
        if loop.fast_dropout is not None:  # the saved model uses torch's own dropout and attention
            restore_dropout(model, loop.fast_dropout)
        model = fp32_for_export(cfg, model)
        save_adapter_and_merged(model, loop.tokenizer, run_dir, cfg.model.name_or_path)
        rows = read_metrics(run_dir / "metrics.jsonl")
        plot_training_curves(rows, run_dir / "plots")
        train_rows = [r for r in rows if r["split"] == "train"]
        total_tokens = sum(r["tokens_per_s"] for r in train_rows)  # informative only
        t = cfg.train
        summary = {
            "run_name": run_dir.name,
            "base_model": cfg.model.name_or_path,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "params": loop.counts.to_dict(),
            "budget": {"max_trainable_params": cfg.budget.max_trainable_params, "used": loop.counts.trainable,
                       "fraction": loop.counts.trainable / cfg.budget.max_trainable_params},
            "best": {"step": loop.best_step, "val_accuracy": loop.best_acc, **loop.best_metrics},
            "final_validation": loop.last_eval,
            "steps": loop.step, "total_steps": loop.total_steps, "steps_per_epoch": loop.steps_per_epoch,
            "epochs": round(loop.step / loop.steps_per_epoch, 4), "stopped_early": stopped_early,
            "resumed_from_step": getattr(loop, "resumed_from", None),
            "train_rows": len(loop.train_enc), "validation_rows": len(loop.val_enc),
            "world_size": loop.world, "per_device_batch_size": t.per_device_batch_size,
            "grad_accumulation": t.grad_accumulation, "global_batch_size": loop.global_batch,
            "precision": loop.precision, "device": str(acc.device),
            "dropout": "fast-cpu (numpy PCG64 masks)" if loop.fast_dropout is not None else "torch",
            "timings": {
                "train_seconds": round(loop.train_time, 3),
                "train_samples_per_s": round(loop.step * loop.global_batch / max(loop.train_time, 1e-9), 2),
                "mean_logged_tokens_per_s": round(total_tokens / max(len(train_rows), 1), 1),
            },
            "versions": library_versions(),
        }
        write_json(run_dir / "summary.json", summary)
    acc.wait_for_everyone()
    return Run(run_dir, cfg, summary)
