"""``RUN_DIR/report.html``: one self-contained page about a finished run.

The parameter breakdown against the budget, the training curves, the evaluation metrics with
confusion matrices and per-class F1 (validation; the held-out test split and any other ``eval/``
split once `evaluate` ran), the most-confused and least-confident validation examples, timings and
the machine.  The validation predictions are the best evaluation's (``validation_logits.npy``,
saved by `train`: the ones behind ``best.val_accuracy``) on (at most ``max_rows`` of) the run's own
validation split, rebuilt from its config exactly as training split it; where that file is absent
(the best evaluation came before a resume; an older run) or the rebuilt rows are not the ones it was
saved for (``summary.json``'s ``validation_sha256``: the data file was edited since) the run's
``Predictor`` makes them.
Written at the end of `train`, by `evaluate`, and by ``agnews-lora report RUN_DIR``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .html_page import cards, esc, figure_img, fmt, page, section, write_page
from .report_sections import (
    ValPredictions,
    curves_figure,
    eval_section,
    examples_section,
    params_section,
    timings_section,
)
from .runs import VAL_LOGITS, load_finished_run, read_metrics

log = logging.getLogger(__name__)

MAX_ROWS = 1000  # validation rows predicted for the report (a seeded sample of larger splits)
N_EXAMPLES = 10


def validation_predictions(
    run_dir: Path, cfg, max_rows: int, rows_sha256: str | None = None
) -> ValPredictions:
    """The run's predictions on (a seeded sample of at most ``max_rows`` of) its validation
    split; the saved logits are used only when the split's fingerprint is ``rows_sha256``."""
    from .data import load_splits, rows_fingerprint
    from .prediction import Predictor, softmax

    val = load_splits(cfg)["validation"]
    idx = np.arange(len(val))
    if len(val) > max_rows:
        rng = np.random.default_rng(cfg.data.split_seed)
        idx = np.sort(rng.choice(len(val), max_rows, replace=False))
    sample = val.subset(idx)
    saved = None
    if rows_sha256 is not None and rows_sha256 == rows_fingerprint(val):
        saved = _saved_val_logits(run_dir, (len(val), len(cfg.data.label_names)))
    if saved is not None:
        logits = saved[idx]
    else:
        predictor = Predictor.from_run(run_dir, batch_size=cfg.train.eval_batch_size)
        logits, _ = predictor.logits(sample.texts)
    return ValPredictions(sample.texts, np.asarray(sample.labels), softmax(logits), len(val))


def _saved_val_logits(run_dir: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The logits `train` saved from its best evaluation, if they fit this validation split."""
    try:
        logits = np.load(run_dir / VAL_LOGITS, allow_pickle=False)
    except (OSError, ValueError):
        return None  # absent (a resumed run, an older run) or unreadable: predict instead
    return logits if logits.shape == shape and np.isfinite(logits).all() else None


def eval_results(run_dir: Path) -> dict[str, dict]:
    """``eval/<split>/metrics.json`` of every split `evaluate` wrote, ``test`` first."""
    out = {}
    for path in sorted((run_dir / "eval").glob("*/metrics.json")):
        try:
            out[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("report: %s is unreadable; left out", path)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != "test", kv[0])))


def build_run_report(run_dir: str | Path, max_rows: int = MAX_ROWS) -> str:
    """The HTML text of ``run_dir``'s report (see the module docstring)."""
    run_dir = Path(run_dir)
    cfg, summary = load_finished_run(run_dir)
    labels = list(cfg.data.label_names)
    val, why_not = None, ""
    try:
        val = validation_predictions(run_dir, cfg, max_rows, summary.get("validation_sha256"))
    except Exception as e:  # noqa: BLE001 - no data file or Hub: the rest of the report stands
        why_not = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.warning("report: no validation predictions (%s)", why_not)
    evals = eval_results(run_dir)
    best, p = summary.get("best", {}), summary.get("params", {})
    budget = summary.get("budget", {}).get("max_trainable_params") or 0
    top = [
        (fmt(best.get("val_accuracy")), f"best validation accuracy (step {best.get('step')})"),
        (fmt(best.get("val_macro_f1")), "validation macro-F1"),
        (f"{p.get('trainable', 0):,}", f"trainable of {budget:,}"),
        (f"{summary.get('timings', {}).get('train_seconds', 0):,.0f} s", "training time"),
    ]
    if "test" in evals:
        top.insert(1, (fmt(evals["test"].get("accuracy")), "held-out test accuracy"))
    rows = read_metrics(run_dir / "metrics.jsonl")
    curves = figure_img(curves_figure(rows), "training curves") if rows else "<p>No metrics.</p>"
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    sections = [
        section("Summary", cards(top)),
        params_section(summary),
        section("Training curves", curves),
        eval_section(val, why_not, evals, labels),
        examples_section(val, labels, N_EXAMPLES),
        timings_section(summary),
        section(
            "Resolved config",
            f"<details><summary>config.yaml</summary><pre>{esc(config_text)}</pre></details>",
        ),
    ]
    subtitle = f"base model {summary.get('base_model')} · finished {summary.get('finished_at')}"
    return page(f"Run {run_dir.name}", subtitle, sections)


def write_run_report(run_dir: str | Path, max_rows: int = MAX_ROWS) -> Path:
    """Write ``run_dir/report.html`` and return its path."""
    return write_page(Path(run_dir) / "report.html", build_run_report(run_dir, max_rows))


def try_write_run_report(run_dir: str | Path) -> Path | None:
    """`write_run_report` for the end of `train` / `evaluate`: a failure is logged, not raised
    (the run's results stand; ``agnews-lora report RUN_DIR`` tries again)."""
    try:
        return write_run_report(run_dir)
    except Exception as e:  # noqa: BLE001
        log.warning(
            "report.html not written (%s: %s); try `agnews-lora report %s`",
            type(e).__name__,
            e,
            run_dir,
        )
        return None
