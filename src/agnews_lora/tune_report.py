"""What `tune` writes: the files of `sweep` (via sweep_report) from the study database, and
``best_config.yaml``, the best trial's full config, ready for ``agnews-lora train --config``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import save_config
from .sweep_report import write_reports
from .tune_space import TuneSpec


@dataclass
class _Child:  # what sweep_report needs of a sweep child
    name: str
    labels: dict[str, str]


@dataclass
class StudyView:  # what sweep_report needs of a sweep
    path: Path
    base_config: Path | None
    overrides: dict
    output_dir: Path
    swept_keys: list[str]
    children: list[_Child]


def rows_of(spec: TuneSpec, study) -> list[dict]:
    from optuna.trial import TrialState

    rows, budget = [], spec.base.budget.max_trainable_params
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        status = (
            {TrialState.WAITING: "waiting", TrialState.RUNNING: "running"}.get(t.state)
            or a.get("status")
            or ("ok" if t.state == TrialState.COMPLETE else t.state.name.lower())
        )
        if t.state == TrialState.FAIL and status not in ("failed", "interrupted"):
            status = "failed"
            a = {
                **a,
                "error": a.get("error") or "worker stopped (heartbeat lost); the trial was retried",
            }
        labels = a.get("labels") or {k: str(v) for k, v in t.params.items()}
        row = {
            "name": f"trial-{t.number:04d}",
            "status": status,
            **labels,
            "trainable_params": a.get("trainable_params"),
            "lora_params": a.get("lora_params"),
            "head_params": a.get("head_params"),
            "budget": budget,
            "run_dir": a.get("run_dir", ""),
            "error": a.get("error", ""),
        }
        s = a.get("summary") or {}
        row.update(
            val_accuracy=s.get("val_accuracy"),
            val_macro_f1=s.get("val_macro_f1"),
            best_step=s.get("best_step"),
            steps=s.get("steps"),
            train_seconds=s.get("train_seconds"),
        )
        if status == "pruned":
            row["val_accuracy"] = a.get("last_val_accuracy")
        if row["trainable_params"] is not None:
            row["fits_budget"] = row["trainable_params"] <= budget
        rows.append(row)
    return rows


def write_study_reports(spec: TuneSpec, study) -> tuple[list[dict], Path | None]:
    """summary.csv, pareto.png, summary.md (as sweep) + best_config.yaml: (rows, best config)."""
    from optuna.trial import TrialState

    rows = rows_of(spec, study)
    view = StudyView(
        spec.path,
        spec.base_config,
        spec.overrides,
        spec.output_dir,
        spec.keys(),
        [
            _Child(r["name"], {k: r.get(k) for k in spec.keys() if r.get(k) is not None})
            for r in rows
        ],
    )
    write_reports(
        view, rows, kind="Tuning study"
    )  # pruned trials have no final result: off the Pareto front and the plot
    complete = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE and "sets" in t.user_attrs
    ]  # (trials added by hand carry no config)
    best_path, lines = None, []
    if complete:
        best = max(complete, key=lambda t: t.values[0])
        cfg = spec.config(best.user_attrs["sets"])
        cfg.run_name = None
        cfg.output_dir = (
            spec.base.output_dir if spec.base.output_dir != str(spec.output_dir) else "runs"
        )
        best_path = spec.output_dir / "best_config.yaml"
        tmp = best_path.with_name(f".best_config.yaml.{os.getpid()}.tmp")
        save_config(cfg, tmp)
        text = (
            f"# best trial {best.number} of study '{spec.study_name}': val accuracy "
            f"{best.values[0]:.4f} with {best.user_attrs['trainable_params']:,} trainable "
            "parameters\n"
            f"# agnews-lora train --config {best_path}\n"
        )
        tmp.write_text(text + tmp.read_text(encoding="utf-8"), encoding="utf-8")
        tmp.replace(best_path)
        front = sorted(study.best_trials, key=lambda t: t.number)
        names = [
            "accuracy",
            "trainable params" if spec.objective == "accuracy,params" else "train seconds",
        ]
        lines += [
            "",
            f"## Study `{spec.study_name}` ({spec.objective}, sampler {spec.sampler})",
            "",
            f"Best validation accuracy: **trial-{best.number:04d}**, {best.values[0]:.4f}; "
            "its config: "
            f"[`best_config.yaml`](best_config.yaml) (`agnews-lora train --config {best_path}`).",
        ]
        if len(spec.directions) > 1:
            lines += [
                "",
                "Optuna's Pareto front ("
                + " vs ".join(names)
                + "): "
                + ", ".join(
                    f"trial-{t.number:04d} ({t.values[0]:.4f}, {t.values[1]:,.1f})" for t in front
                )
                + ".",
            ]
    if spec.layouts and spec.layouts.dropped:
        lines += [
            "",
            "Dropped from the space before sampling (over budget in every layout): "
            + ", ".join(f"`{d}`" for d in spec.layouts.dropped)
            + ".",
        ]
    md = spec.output_dir / "summary.md"
    # written by write_reports, with its "Tuning study" heading; the best trial's lines follow
    text = md.read_text(encoding="utf-8")
    md.write_text(text + "\n".join(lines) + "\n", encoding="utf-8")
    return rows, best_path
