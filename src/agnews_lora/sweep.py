"""`agnews-lora sweep SWEEP_YAML`: a grid (or list) of config overrides -> child runs under one directory.

The sweep file (``base_config``, ``output_dir``, ``overrides``, ``grid``, ``runs``) is described in
docs/sweeps.md.  Each child is an ordinary run directory ``<sweep dir>/<child name>``; a child with a
``summary.json`` is skipped on a re-run, an interrupted one resumes from its checkpoint, a failed one is
recorded (``status`` column) and the sweep goes on.  Writes ``summary.csv``, ``pareto.png``, ``summary.md``.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config, parse_override, read_yaml
from .errors import TrainingInterrupted, UserError
from .sweep_report import write_reports

log = logging.getLogger(__name__)

SWEEP_KEYS = ("base_config", "output_dir", "overrides", "grid", "runs")
RESERVED = ("output_dir", "run_name")  # the sweep decides where children go


@dataclass
class Child:
    name: str
    sets: dict[str, Any]  # config key -> value, this child only
    labels: dict[str, str]  # config key -> short label (for names and the plot)
    config: Config | None = None


@dataclass
class Sweep:
    path: Path
    base_config: Path | None
    overrides: dict[str, Any]
    children: list[Child]
    output_dir: Path
    swept_keys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# reading the sweep file


def _pairs(value: Any, where: str) -> dict[str, Any]:
    """A mapping ``{key: value}`` or a list of ``KEY=VALUE`` strings (values parsed as YAML) -> dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        out = {str(k): v for k, v in value.items()}
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        out = {}
        for item in value:
            if "=" not in item:
                raise UserError(f"{where}: expected KEY=VALUE, got '{item}'")
            key, value = parse_override(item)  # the bounded YAML loader of --set
            out[key] = value
    else:
        raise UserError(
            f"{where} must be a mapping of config keys to values (or a list of KEY=VALUE strings)"
        )
    for key in out:
        if key.split(".")[0] in RESERVED:
            raise UserError(
                f"{where}: '{key}' is set by the sweep itself (use output_dir / --output-dir of the sweep)"
            )
    return out


def _set_strings(values: dict[str, Any]) -> list[str]:
    """Back to ``KEY=VALUE`` strings for config.apply_overrides (JSON is valid YAML)."""
    return [f"{k}={json.dumps(v, default=str)}" for k, v in values.items()]


def _slug(value: Any) -> str:
    if isinstance(value, list):
        text = "-".join(_slug(v) for v in value)
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-.") or "x"


def _part(key: str, label: str, named: bool) -> str:
    """One part of a child name: a chosen label as is, else the key's last part + the value (r4,
    learning_rate-0.001)."""
    short = key.split(".")[-1]
    return label if named else f"{short}{label}" if len(short) == 1 else f"{short}-{label}"


def _grid_children(grid: Any, where: str) -> list[Child]:
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"{where}: 'grid' must map config keys to lists of values")
    axes = []
    for key, values in _pairs(grid, f"{where} grid").items():
        if isinstance(values, dict):  # label -> value
            axis = [(str(label), v, True) for label, v in values.items()]
        elif isinstance(values, list):
            axis = [(_slug(v), v, False) for v in values]
        else:
            raise UserError(
                f"{where}: grid '{key}' must be a list of values (or a mapping label -> value), got {values!r}"
            )
        if not axis:
            raise UserError(f"{where}: grid '{key}' has no values")
        axes.append([(key, label, v, named) for label, v, named in axis])
    return [
        Child(
            "_".join(_part(k, label, named) for k, label, _, named in combo),
            {k: v for k, _, v, _ in combo},
            {k: label for k, label, _, _ in combo},
        )
        for combo in itertools.product(*axes)
    ]


def _run_children(runs: Any, where: str) -> list[Child]:
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{where}: 'runs' must be a list of {{name: ..., set: {{...}}}} entries")
    children = []
    for i, run in enumerate(runs):
        w = f"{where} runs[{i}]"
        if not isinstance(run, dict) or set(run) - {"name", "set"}:
            raise UserError(f"{w}: expected a mapping with keys 'name' (optional) and 'set'")
        sets = _pairs(run.get("set"), w)
        labels = {k: _slug(v) for k, v in sets.items()}
        name = (
            str(run["name"])
            if run.get("name") is not None
            else ("_".join(_part(k, v, False) for k, v in labels.items()) or "base")
        )
        children.append(Child(name, sets, labels))
    return children


def read_study_file(path: Path, kind: str, keys: tuple[str, ...]) -> tuple[dict, Path | None]:
    """A sweep or tune file (``kind``: "sweep" / "tune"): its mapping, strict about keys, and its
    ``base_config`` resolved against the working directory, then the file's own folder."""
    where = f"{kind} file '{path}'"
    data = read_yaml(path, f"{kind} file")
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with keys {', '.join(keys)}")
    for key in data:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.5)
            hint = (
                f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(keys)})"
            )
            raise UserError(f"{where}: unknown key '{key}'{hint}")
    if data.get("base_config") is None:
        return data, None
    raw = Path(str(data["base_config"])).expanduser()
    candidates = [raw] if raw.is_absolute() else [raw, path.parent / raw]
    base = next((c for c in candidates if c.is_file()), None)
    if base is None:
        raise UserError(
            f"{where}: base_config '{raw}' not found (looked in the working directory and "
            f"next to the {kind} file)"
        )
    return data, base


def load_sweep(path: str | Path, output_dir: str | Path | None = None) -> Sweep:
    """Read and fully validate a sweep file: every child's config is built (strictly) before anything trains."""
    path = Path(path)
    where = f"sweep file '{path}'"
    data, base = read_study_file(path, "sweep", SWEEP_KEYS)
    if data.get("grid") is None and data.get("runs") is None:
        raise UserError(f"{where} defines no children: add a 'grid' and/or 'runs'")
    overrides = _pairs(data.get("overrides"), f"{where} overrides")
    children = []
    if data.get("grid") is not None:
        children += _grid_children(data["grid"], where)
    if data.get("runs") is not None:
        children += _run_children(data["runs"], where)

    out = Path(output_dir or data.get("output_dir") or Path("sweeps") / path.stem)
    seen: dict[str, Child] = {}
    for child in children:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", child.name):
            raise UserError(
                f"{where}: child name '{child.name}' must be letters, digits and . _ + = - (no slashes)"
            )
        if child.name in seen:
            raise UserError(
                f"{where}: two children are named '{child.name}'; give the runs entries distinct names"
            )
        seen[child.name] = child
        try:
            cfg = load_config(base, _set_strings(overrides) + _set_strings(child.sets))
        except UserError as e:
            raise UserError(f"{where}, child '{child.name}': {e}") from None
        cfg.output_dir, cfg.run_name = str(out), child.name
        child.config = cfg
    swept = list(dict.fromkeys(k for c in children for k in c.sets))
    return Sweep(path, base, overrides, children, out, swept)


# ---------------------------------------------------------------------------------------------
# running


def _same_config(run_dir: Path, cfg: Config) -> bool:
    from .runs import load_run_config

    try:
        saved = load_run_config(run_dir).to_dict()
    except UserError:
        return False
    now = cfg.to_dict()
    for d in (saved, now):
        d.pop("output_dir", None), d.pop("run_name", None)
    return saved == now


def _value(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part, None)
    return ",".join(map(str, obj)) if isinstance(obj, list) else obj


def _row(
    sweep: Sweep,
    child: Child,
    status: str,
    summary: dict | None = None,
    counts=None,
    error: str = "",
) -> dict:
    cfg = child.config
    row = {"name": child.name, "status": status, **{k: _value(cfg, k) for k in sweep.swept_keys}}
    if summary:
        p, b = summary.get("params", {}), summary.get("best", {})
        row.update(
            trainable_params=p.get("trainable"),
            lora_params=p.get("lora"),
            head_params=p.get("head"),
            val_accuracy=b.get("val_accuracy"),
            val_macro_f1=b.get("val_macro_f1"),
            best_step=b.get("step"),
            steps=summary.get("steps"),
            train_seconds=summary.get("timings", {}).get("train_seconds"),
        )
    elif counts is not None:
        row.update(
            trainable_params=counts.trainable, lora_params=counts.lora, head_params=counts.head
        )
    budget = cfg.budget.max_trainable_params
    row.update(budget=budget, run_dir=str(Path(sweep.output_dir) / child.name), error=error)
    if row.get("trainable_params") is not None:
        row["fits_budget"] = row["trainable_params"] <= budget
    return row


def _run_child(sweep: Sweep, child: Child, progress: bool) -> dict:
    from . import checkpoint as ckpt
    from .budget import check_budget
    from .training import plan_counts, train

    cfg, run_dir = child.config, Path(sweep.output_dir) / child.name
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _row(
                sweep,
                child,
                "failed",
                error=f"{summary_path} is corrupt; delete {run_dir} to retrain",
            )
        if _same_config(run_dir, cfg):
            log.info("  finished earlier: skipped")
            return _row(sweep, child, "done", summary)
        log.warning(
            "  finished earlier with a different config: kept as 'stale'; delete %s to retrain it",
            run_dir,
        )
        return _row(
            sweep,
            child,
            "stale",
            summary,
            error="trained with a different config; delete the run directory to retrain",
        )
    try:
        counts = plan_counts(cfg)
    except UserError as e:
        return _row(sweep, child, "failed", error=str(e))
    try:
        check_budget(counts, cfg.budget.max_trainable_params)
    except UserError as e:
        log.warning("  %s", e)
        return _row(sweep, child, "over_budget", counts=counts, error=str(e))
    resume, status = None, "ok"
    if (
        run_dir / "config.yaml"
    ).is_file():  # started before but unfinished: resume from a checkpoint, else start over
        if _same_config(run_dir, cfg) and ckpt.latest_checkpoint(run_dir / "checkpoints"):
            resume, status = run_dir, "resumed"
            log.info("  resuming the unfinished run from its latest checkpoint")
        else:
            log.info("  removing the unfinished run directory %s and starting over", run_dir)
            shutil.rmtree(run_dir)
    try:
        run = train(None if resume else cfg, resume=resume, progress=progress)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except UserError as e:
        log.warning("  failed: %s", e)
        return _row(sweep, child, "failed", counts=counts, error=str(e))
    except Exception as e:  # noqa: BLE001 - one child's crash must not end the sweep
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("  failed: %s", msg)
        return _row(sweep, child, "failed", counts=counts, error=msg)
    return _row(sweep, child, status, run.summary)


def run_sweep(sweep: Sweep, progress: bool = False) -> list[dict]:
    """Train (or skip) every child, then write summary.csv, pareto.png and summary.md; returns the rows."""
    Path(sweep.output_dir).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        for i, child in enumerate(sweep.children, 1):
            sets = ", ".join(f"{k}={_value(child.config, k)}" for k in child.sets)
            log.info("[%d/%d] %s  (%s)", i, len(sweep.children), child.name, sets or "base config")
            row = _run_child(sweep, child, progress)
            rows.append(row)
            if row.get("val_accuracy") is not None and row["status"] in ("ok", "resumed"):
                log.info(
                    "  val accuracy %.4f with %s trainable parameters in %.0f s",
                    row["val_accuracy"],
                    f"{row['trainable_params']:,}",
                    row.get("train_seconds") or 0,
                )
    finally:  # also on Ctrl-C: what is done so far is summarised; the rest is 'pending'
        done = {r["name"] for r in rows}
        rows += [_row(sweep, c, "pending") for c in sweep.children if c.name not in done]
        write_reports(sweep, rows)
    return rows
