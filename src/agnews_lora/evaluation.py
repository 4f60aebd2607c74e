"""Metrics (scikit-learn) and `evaluate`: score a finished run on a labelled split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
)

from .errors import UserError
from .runs import write_json


def classification_metrics(labels: np.ndarray, logits: np.ndarray) -> dict:
    """accuracy, macro-F1 and mean cross-entropy of ``logits`` against integer ``labels``."""
    preds = logits.argmax(axis=1)
    logp = torch.log_softmax(torch.from_numpy(logits.astype(np.float64)), dim=1)
    loss = float(torch.nn.functional.nll_loss(logp, torch.from_numpy(labels.astype(np.int64))))
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(
            f1_score(
                labels, preds, average="macro", labels=np.arange(logits.shape[1]), zero_division=0
            )
        ),
        "loss": loss,
    }


HELD_OUT = (
    "test"  # the split `evaluate RUN_DIR` scores: eval/test, eval/test-int8, eval/test-onnx..
)


def held_out_names() -> set[str]:
    """The folder names of held-out results: ``test`` + `variant_suffix` of every backend."""
    from .backends import BACKENDS, variant_suffix

    return {HELD_OUT + variant_suffix(b, q) for b in BACKENDS for q in (False, True)}


def eval_dir(run_dir: Path, split: str, from_data_file: bool, overwrite: bool) -> Path:
    """``run_dir/eval/<split>``: a name that would leave ``eval/`` is refused; one from ``--data``
    that would replace the held-out test results is refused unless ``overwrite``."""
    if (
        not split
        or split in (".", "..")
        or "/" in split
        or "\\" in split
        or Path(split).is_absolute()
        or split != Path(split).name
    ):
        raise UserError(
            f"split name '{split}' cannot name a folder under '{run_dir / 'eval'}'; "
            "rename the --data file"
        )
    out = run_dir / "eval" / split
    held_out = split in held_out_names()
    if from_data_file and held_out and out.exists() and not overwrite:
        raise UserError(
            f"--data would replace the held-out results in '{out}'; rename the file "
            "or pass --overwrite"
        )
    return out


def evaluate_run(
    run_dir: str | Path,
    data_file: str | None = None,
    trust_pickle: bool = False,
    batch_size: int | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
    backend: str = "torch",
) -> dict:
    """Score a finished run on ``data_file`` (default: its test split) with ``backend``; write
    ``eval/<split><variant>/`` (`backends.variant_suffix`: ``test``, ``test-int8``,
    ``test-onnx``, ``test-openvino-int8``, ...)."""
    from .backends import check_backend, variant_suffix
    from .data import load_test_split
    from .plotting import plot_confusion_matrix
    from .prediction import Predictor
    from .runs import load_finished_run

    run_dir = Path(run_dir)
    check_backend(backend)
    cfg, summary = load_finished_run(run_dir)
    table = load_test_split(cfg, data_file, trust_pickle)
    split = table.name + variant_suffix(backend, bool(quantize))
    out = eval_dir(run_dir, split, bool(data_file), overwrite)
    predictor = Predictor.from_run(
        run_dir,
        batch_size=batch_size or cfg.train.eval_batch_size,
        quantize=quantize,
        backend=backend,
    )
    t0 = time.perf_counter()
    logits, truncated = predictor.logits(table.texts)
    seconds = time.perf_counter() - t0
    names = predictor.label_names
    metrics = classification_metrics(table.labels, logits)
    preds = logits.argmax(axis=1)
    labels = np.arange(len(names))
    per_class = f1_score(table.labels, preds, average=None, labels=labels, zero_division=0)
    metrics.update(
        {
            "split": split,
            "data_file": str(data_file) if data_file else None,
            "rows": len(table),
            "truncated_rows": int(sum(truncated)),
            "per_class_f1": dict(zip(names, map(float, per_class))),
            "backend": backend,
            "precision_used": predictor.precision,
            "quantized": bool(quantize),
            "seconds": round(seconds, 3),
            "samples_per_s": round(len(table) / max(seconds, 1e-9), 1),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    report = classification_report(
        table.labels, preds, labels=labels, target_names=names, digits=4, zero_division=0
    )
    (out / "classification_report.txt").write_text(report, encoding="utf-8")
    cm = confusion_matrix(table.labels, preds, labels=labels)
    metrics["confusion_matrix"] = cm.tolist()
    plot_confusion_matrix(
        cm, names, out / "confusion_matrix.png", title=f"{run_dir.name} — {split}"
    )
    write_json(out / "metrics.json", metrics)
    if split == HELD_OUT:  # the merged model as saved, on the held-out split: into its cards
        from .model_card import refresh_cards

        refresh_cards(run_dir, cfg, summary)

    from .run_report import try_write_run_report

    try_write_run_report(run_dir)  # the report shows the new split
    return metrics
