"""Experiment tracking (``train.report_to``) through Accelerate's trackers.

`check_trackers` runs before anything is written (an unknown name or a missing package is a
one-line `UserError` naming the ``pip install``); `accelerator_kwargs` gives the ``log_with`` /
``project_dir`` the `Accelerator` is built with; `Tracking` starts the trackers when the loop
starts (main process only), logs every record written to ``metrics.jsonl`` and ends them.

Where each one writes, with no network needed to select it:

* ``tensorboard``: ``RUN_DIR/tensorboard/`` (event files + Accelerate's ``hparams.yml``);
* ``wandb``: offline, into ``RUN_DIR/wandb/``, unless the user configured it (``WANDB_MODE`` or
  ``WANDB_API_KEY`` set): then wandb's own settings decide;
* ``mlflow``: the SQLite store ``RUN_DIR/mlflow.db`` (artifacts in ``RUN_DIR/mlartifacts/``)
  unless ``MLFLOW_TRACKING_URI`` is set;
* the others (comet_ml, aim, clearml, dvclive, swanlab, trackio): their own configuration;
  aim and dvclive write under the run directory.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import accelerate.utils

from .errors import UserError

PROJECT = "agnews-lora"  # wandb project / mlflow experiment name (their env variables override)

# Accelerate's tracker name -> the pip package that provides it
TRACKERS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet-ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def is_available(name: str) -> bool:
    """Whether Accelerate finds the tracker's package (its own check, so the two agree)."""
    return bool(getattr(accelerate.utils, f"is_{name}_available")())


def check_trackers(names: list[str]) -> list[str]:
    """``names`` without repeats; an unknown name or a missing package is a `UserError`."""
    out: list[str] = []
    for name in names:
        if name not in TRACKERS:
            close = difflib.get_close_matches(name, list(TRACKERS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(
                f"train.report_to: unknown tracker '{name}'; {hint}choose from "
                f"{', '.join(TRACKERS)}"
            )
        if not is_available(name):
            extra = ' (or pip install -e ".[track]")' if name == "tensorboard" else ""
            raise UserError(
                f"train.report_to: tracker '{name}' needs the {TRACKERS[name]} package, which is "
                f"not installed: pip install {TRACKERS[name]}{extra}"
            )
        if name not in out:
            out.append(name)
    return out


def accelerator_kwargs(names: list[str], run_dir: Path) -> dict:
    """``log_with`` / ``project_dir`` for the `Accelerator` (nothing without trackers)."""
    if not names:
        return {}
    from accelerate.tracking import TensorBoardTracker

    # tensorboard as an instance: its folder is RUN_DIR/tensorboard, not RUN_DIR/<project>
    log_with = [
        TensorBoardTracker("tensorboard", str(run_dir)) if n == "tensorboard" else n for n in names
    ]
    return {"log_with": log_with, "project_dir": str(run_dir)}


def init_kwargs(names: list[str], run_dir: Path, environ=os.environ) -> dict:
    """Per-tracker keyword arguments of `Accelerator.init_trackers` (local, offline defaults)."""
    kw: dict[str, dict] = {}
    if "wandb" in names:
        kw["wandb"] = {"name": run_dir.name, "dir": str(run_dir)}
        if not (environ.get("WANDB_MODE") or environ.get("WANDB_API_KEY")):
            kw["wandb"]["mode"] = "offline"
    if "mlflow" in names:
        kw["mlflow"] = {"run_name": run_dir.name}
        if not environ.get("MLFLOW_TRACKING_URI"):
            kw["mlflow"]["logging_dir"] = str(run_dir / "mlartifacts")
    if "dvclive" in names:
        kw["dvclive"] = {"dir": str(run_dir / "dvclive")}
    return kw


def mlflow_uri(run_dir: Path, environ=os.environ) -> str | None:
    """The store mlflow gets: None (the user's MLFLOW_TRACKING_URI) or RUN_DIR/mlflow.db."""
    if environ.get("MLFLOW_TRACKING_URI"):
        return None
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def flat_config(cfg_dict: dict, prefix: str = "") -> dict:
    """The resolved config as ``section.key -> int | float | str | bool`` (what every tracker
    takes as hyperparameters: lists as JSON text, null as "null")."""
    out: dict = {}
    for k, v in cfg_dict.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, f"{key}."))
        elif v is None:
            out[key] = "null"
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def record_metrics(rec: dict) -> dict:
    """A metrics.jsonl record as tracker scalars: ``<split>/<name>`` for every number in it."""
    split = rec.get("split", "train")
    return {
        f"{split}/{k}": v
        for k, v in rec.items()
        if k not in ("step", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class Tracking:
    """The run's trackers on the main process: `start`, `log` each record, `end` (idempotent)."""

    def __init__(self, acc, cfg, run_dir: Path):
        self.acc, self.run_dir = acc, Path(run_dir)
        self.names = list(dict.fromkeys(cfg.train.report_to))
        self.config = flat_config(cfg.to_dict())
        self.started = False

    def start(self) -> Tracking:
        if self.names and self.acc.is_main_process and not self.started:
            uri = mlflow_uri(self.run_dir) if "mlflow" in self.names else None
            if uri is not None:
                import mlflow

                mlflow.set_tracking_uri(uri)
            self.acc.init_trackers(
                PROJECT, config=self.config, init_kwargs=init_kwargs(self.names, self.run_dir)
            )
            self.started = True
        return self

    def log(self, rec: dict) -> None:
        if self.started:
            self.acc.log(record_metrics(rec), step=int(rec["step"]))

    def end(self) -> None:
        """Finish every tracker. Not `Accelerator.end_training`: that also destroys the process
        group, which the export after the loop still waits on."""
        if self.started:
            self.started = False
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.trackers.clear()
