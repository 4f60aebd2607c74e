"""report.html: the run report (written by train / evaluate / `agnews-lora report`) and the
sweep / tuning-study report; self-contained, and rendered by headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from browser import distinct_colours, requires_chromium, screenshot

from agnews_lora.cli import main

EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//""", re.I)


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A writable copy of the session's finished run."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert not EXTERNAL.search(text), "the report loads something from elsewhere"
    assert "<script" not in text and "<link" not in text


def test_train_writes_a_self_contained_report(trained_run):
    from agnews_lora.machine import cpu_model

    text = (trained_run / "report.html").read_text(encoding="utf-8")
    _self_contained(text)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["machine"]["cpu"] == cpu_model() and summary["machine"]["torch"]
    p = summary["params"]
    for n in (p["lora"], p["head"], p["trainable"], summary["budget"]["max_trainable_params"]):
        assert f">{n:,}<" in text
    assert f"{summary['best']['val_accuracy']:.4f}" in text
    # curves, budget bar, validation confusion matrix, per-class F1: all inline PNGs
    assert text.count('src="data:image/png;base64,') >= 4
    for name in ("World", "Sports", "Business", "Sci/Tech"):
        assert f"<td>{name}</td>" in text
    n_val = summary["validation_rows"]
    assert f"{n_val:,} of {n_val:,}" in text  # the whole (small) validation split was predicted
    assert "Most confidently wrong" in text and "Least confident" in text
    assert "No held-out test results yet" in text and summary["machine"]["cpu"] in text


def test_evaluate_rewrites_the_report_with_the_test_split(run_copy):
    (run_copy / "report.html").unlink()
    assert main(["evaluate", str(run_copy)]) == 0
    m = json.loads((run_copy / "eval" / "test" / "metrics.json").read_text())
    text = (run_copy / "report.html").read_text(encoding="utf-8")
    _self_contained(text)
    assert "held-out test accuracy" in text and f"{m['accuracy']:.4f}" in text
    assert "No held-out test results yet" not in text
    for name, f1 in m["per_class_f1"].items():  # the per-class table has a test column
        assert re.search(
            rf"<td>{re.escape(name)}</td><td class=\"n\">[0-9.]+</td>"
            rf"<td class=\"n\">{f1:.4f}</td>",
            text,
        )


def test_report_command_regenerates_with_a_capped_sample(run_copy, capsys):
    (run_copy / "report.html").write_text("stale", encoding="utf-8")
    assert main(["report", str(run_copy), "--max-rows", "20"]) == 0
    assert str(run_copy / "report.html") in capsys.readouterr().out
    text = (run_copy / "report.html").read_text(encoding="utf-8")
    n_val = json.loads((run_copy / "summary.json").read_text())["validation_rows"]
    assert f"20 of {n_val:,}" in text and "stale" not in text


def test_report_of_a_non_run_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not an agnews-lora run directory" in err
    assert not (tmp_path / "report.html").exists()


def test_report_without_its_data_still_has_everything_else(run_copy, tmp_path):
    from agnews_lora.run_report import build_run_report

    cfg_path = run_copy / "config.yaml"
    text = cfg_path.read_text(encoding="utf-8")
    train_file = re.search(r"train_file: (.+)", text).group(1).strip().strip("'\"")
    cfg_path.write_text(text.replace(train_file, str(tmp_path / "gone.csv")), encoding="utf-8")
    html = build_run_report(run_copy)
    assert "No validation predictions:" in html and "gone.csv" in html
    assert "Training curves" in html and "Trainable parameters vs the budget" in html


def test_sweep_report_links_children_and_embeds_the_plot(run_copy, tmp_path):
    from agnews_lora.sweep_report import write_reports
    from agnews_lora.tune_report import StudyView, _Child

    out = tmp_path / "sweep"
    out.mkdir()
    rows = [
        {
            "name": "a",
            "status": "ok",
            "lora.r": "1",
            "trainable_params": 3000,
            "budget": 10_000,
            "fits_budget": True,
            "val_accuracy": 0.5,
            "val_macro_f1": 0.4,
            "train_seconds": 1.5,
            "run_dir": str(run_copy),
            "error": "",
        },
        {
            "name": "b",
            "status": "ok",
            "lora.r": "4",
            "trainable_params": 6000,
            "budget": 10_000,
            "fits_budget": True,
            "val_accuracy": 0.7,
            "val_macro_f1": 0.6,
            "train_seconds": 2.0,
            "run_dir": "",
            "error": "",
        },
        {
            "name": "c",
            "status": "over_budget",
            "lora.r": "64",
            "trainable_params": 90_000,
            "budget": 10_000,
            "fits_budget": False,
            "run_dir": "",
            "error": "over budget: 90,000",
        },
    ]
    view = StudyView(
        tmp_path / "s.yaml",
        None,
        {"train.max_steps": 5},
        out,
        ["lora.r"],
        [_Child(r["name"], {"lora.r": r["lora.r"]}) for r in rows],
    )
    write_reports(view, rows, kind="Tuning study")
    text = (out / "report.html").read_text(encoding="utf-8")
    _self_contained(text)
    assert "<title>Tuning study s</title>" in text and text.count("data:image/png;base64,") == 1
    assert '<a href="../run/report.html">a</a>' in text  # relative: the folder can move
    assert "over budget: 90,000" in text and "0.7000" in text and "6,000" in text
    assert text.count("★") == 3  # a and b on the front, plus the legend line


@requires_chromium
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    png = screenshot((trained_run / "report.html").as_uri(), tmp_path / "report.png", tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000 and distinct_colours(png) > 500


def test_report_reuses_the_best_evaluations_logits(run_copy, tmp_path, monkeypatch):
    """train saves the logits behind best.val_accuracy; the report uses them instead of predicting the
    validation rows again, and predicts them where the file is absent or the rows changed."""
    import numpy as np

    from agnews_lora import prediction
    from agnews_lora.config import load_config
    from agnews_lora.data import load_splits
    from agnews_lora.export import save_val_logits
    from agnews_lora.run_report import build_run_report
    from agnews_lora.tiny import write_csv

    summary = json.loads((run_copy / "summary.json").read_text())
    logits = np.load(run_copy / "validation_logits.npy")
    labels = np.asarray(load_splits(load_config(run_copy / "config.yaml"))["validation"].labels)
    assert logits.shape == (summary["validation_rows"], 4)
    assert float((logits.argmax(1) == labels).mean()) == summary["best"]["val_accuracy"]

    def no_predictor(*a, **k):
        raise RuntimeError("predicted again")

    monkeypatch.setattr(prediction.Predictor, "from_run", no_predictor)
    n_val = summary["validation_rows"]
    assert f"{n_val:,} of {n_val:,}" in build_run_report(run_copy)
    save_val_logits(run_copy, None)  # a resumed run whose best evaluation came before the resume
    assert not (run_copy / "validation_logits.npy").exists()
    assert "No validation predictions: predicted again" in build_run_report(run_copy)
    np.save(run_copy / "validation_logits.npy", logits[:-1])  # not this split's rows: predict again
    assert "predicted again" in build_run_report(run_copy)

    # the data file edited since training: the same number of rows, split alike, other texts
    np.save(run_copy / "validation_logits.npy", logits)
    assert f"{n_val:,} of {n_val:,}" in build_run_report(run_copy)
    cfg_path = run_copy / "config.yaml"
    text = cfg_path.read_text(encoding="utf-8")
    train_file = re.search(r"train_file: (.+)", text).group(1).strip().strip("'\"")
    with open(train_file, newline="", encoding="utf-8") as fh:
        rows = [(r["text"] + " edited", int(r["label"])) for r in csv.DictReader(fh)]
    edited = write_csv(tmp_path / "edited.csv", rows)
    cfg_path.write_text(text.replace(train_file, str(edited)), encoding="utf-8")
    val = load_splits(load_config(cfg_path))["validation"]
    assert len(val) == n_val and np.array_equal(val.labels, labels)  # only the texts differ
    assert "predicted again" in build_run_report(run_copy)
