"""The run directory: what a run writes, and checks that a directory really is a finished run.

Layout::

    runs/<name>/
      config.yaml          fully resolved config (written first)
      metrics.jsonl        one JSON line per log / eval step
      checkpoints/         resumable checkpoints (optional)
      adapter/             PEFT adapter (LoRA + classifier head) + tokenizer
      merged/              LoRA merged into the base weights: plain transformers model + tokenizer
      plots/               loss_curves.png, accuracy_curve.png
      validation_logits.npy  the best evaluation's validation logits (for the run report)
      summary.json         written last: its presence marks the run complete
      eval/<split>/        after `evaluate`
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import latest_checkpoint
from .config import Config, config_from_dict
from .errors import UserError
from .safe_yaml import read_yaml_file

if TYPE_CHECKING:
    import numpy as np

VAL_LOGITS = "validation_logits.npy"  # float32 (validation rows, classes), in the split's order


@dataclass
class Run:
    """A finished run: its directory, config and summary."""

    dir: Path
    config: Config
    summary: dict = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float:
        return self.summary["best"]["val_accuracy"]


@dataclass
class FitResult:
    """What `Loop.fit` hands to the export: the loop's outcome (plain data and weights)."""

    steps: int
    total_steps: int
    steps_per_epoch: int
    stopped_early: bool
    resumed_from: int | None  # the step a resumed run continued from; None for a fresh run
    best_step: int
    best_accuracy: float
    best_metrics: dict  # val_accuracy, val_macro_f1, val_loss of the best evaluation
    best_state: dict | None  # trainable weights at the best evaluation (None: never evaluated)
    final_validation: dict  # the last evaluation's metrics
    train_seconds: float
    train_rows: int
    validation_rows: int
    world_size: int
    per_device_batch_size: int
    grad_accumulation: int
    global_batch_size: int
    precision: str
    device: str
    fast_dropout: dict | None  # what fast_dropout.use_fast_dropout changed (undone before saving)
    schedule: dict | None = None  # how total_steps was chosen (time_budget.plan_steps)
    started: float | None = None  # time.perf_counter() when setup began (this session)
    # validation logits of the best evaluation, in split order (None: that evaluation was before a
    # resume, or never happened); saved for the run report so that it need not predict them again
    best_val_logits: np.ndarray | None = None
    validation_sha256: str | None = None  # data.rows_fingerprint of the validation split


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temp file + rename): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def default_run_name(cfg: Config) -> str:
    model = (
        re.sub(r"[^A-Za-z0-9]+", "-", cfg.model.name_or_path.rstrip("/").split("/")[-1]).strip("-")
        or "model"
    )
    return f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


class MetricsLog:
    """Append-only JSONL, flushed per line (safe to tail while training)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        if truncate_after_step is not None and self.path.exists():
            # resuming: drop lines the interrupted run wrote after its last checkpoint
            keep = [
                line
                for line in read_metrics(self.path)
                if line.get("step", 0) <= truncate_after_step
            ]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash ends the log
    return rows


def unfinished_advice(run_dir: str | Path) -> str:
    """What to do with a run without summary.json: resume it, or delete it and train again."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        return f"resume it with `agnews-lora train --resume {run_dir}`"
    return (
        f"it stopped before its first checkpoint, so it cannot be resumed: delete it "
        f"(`rm -r {run_dir}`) and train again"
    )


def load_run_config(run_dir: str | Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' not found")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"'{run_dir}' is not an agnews-lora run directory (no config.yaml)")
    try:
        data = read_yaml_file(cfg_path, "run config")
    except UserError as e:
        raise UserError(
            f"'{cfg_path}' is corrupt; the run directory cannot be used ({e})"
        ) from None
    try:
        return config_from_dict({} if data is None else data)
    except UserError as e:
        raise UserError(f"'{cfg_path}' does not match this version of agnews-lora: {e}") from None


def load_finished_run(run_dir: str | Path) -> tuple[Config, dict]:
    """Config and summary of a finished run, or a clear error saying what is missing."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(
            f"run '{run_dir}' is not finished (no summary.json); {unfinished_advice(run_dir)}"
        )
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"'{summary_path}' is corrupt (not valid JSON)") from None
    merged = run_dir / "merged"
    if not (merged / "config.json").is_file() or not any(merged.glob("*.safetensors")):
        why = "no usable merged/ model (config.json + safetensors)"
        raise UserError(f"run '{run_dir}' has {why}; train it again")
    return cfg, summary
