"""train.report_to: Accelerate's trackers get the config and every metrics.jsonl record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides
from helpers import set_args

from agnews_lora import cli
from agnews_lora.tracking import (
    TRACKERS,
    check_trackers,
    flat_config,
    init_kwargs,
    mlflow_uri,
    record_metrics,
)


def test_trackers_are_accelerates():
    from accelerate.utils import LoggerType

    assert set(TRACKERS) == {t.value for t in LoggerType} - {"all"}


def test_tensorboard_gets_every_metrics_record(tiny_model_dir, data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agnews_lora.config import load_config
    from agnews_lora.training import train

    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{
            "train.max_steps": 40,
            "train.eval_every": 20,
            "train.log_every": 10,
            "train.report_to": "[tensorboard]",
            "run_name": "tb",
        },
    )
    run = train(load_config(None, sets), progress=False)
    tb = run.dir / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*")), sorted(p.name for p in tb.iterdir())
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "validation"}
    for rec in rows:
        for tag, value in record_metrics(rec).items():
            assert tag in tags, (tag, sorted(tags))
            got = {e.step: e.value for e in acc.Scalars(tag)}
            assert got[rec["step"]] == pytest.approx(value, rel=1e-6), (tag, rec["step"])
    n_val = sum(r["split"] == "validation" for r in rows)
    assert len(acc.Scalars("validation/accuracy")) == n_val == 2
    assert len(acc.Scalars("train/loss")) == sum(r["split"] == "train" for r in rows) == 4
    # the resolved config, as Accelerate stores it next to the events
    (hparams,) = tb.glob("*/hparams.yml")
    assert "train.report_to: '[\"tensorboard\"]'" in hparams.read_text()


@pytest.mark.parametrize(
    "name,package", [("wandb", "wandb"), ("mlflow", "mlflow"), ("comet_ml", "comet-ml")]
)
def test_missing_tracker_package_is_one_line_before_anything(
    name, package, tiny_model_dir, data_dir, tmp_path, capsys
):
    from agnews_lora.tracking import is_available

    if is_available(name):
        pytest.skip(f"{name} is installed here")
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"train.report_to": f"[tensorboard,{name}]", "run_name": "x"},
    )
    argv = ["train", "--no-progress"] + set_args(sets)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install {package}" in err, err
    assert not (tmp_path / "runs").exists()


def test_unknown_tracker_names_the_nearest(tiny_model_dir, data_dir, tmp_path, capsys):
    sets = tiny_overrides(
        tiny_model_dir, data_dir / "train.csv", tmp_path, **{"train.report_to": "tensorbord"}
    )
    assert cli.main(["train"] + set_args(sets)) == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'tensorbord'" in err and "did you mean 'tensorboard'" in err
    assert not (tmp_path / "runs").exists()


def test_check_trackers_drops_repeats():
    assert check_trackers(["tensorboard", "tensorboard"]) == ["tensorboard"]
    assert check_trackers([]) == []


def test_wandb_and_mlflow_stay_local_unless_configured(tmp_path):
    run = tmp_path / "runs" / "r1"
    kw = init_kwargs(["wandb", "mlflow"], run, environ={})
    assert kw["wandb"] == {"name": "r1", "dir": str(run), "mode": "offline"}
    assert kw["mlflow"]["logging_dir"] == str(run / "mlartifacts")
    assert mlflow_uri(run, environ={}) == f"sqlite:///{run.resolve() / 'mlflow.db'}"
    env = {"WANDB_API_KEY": "k", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    kw = init_kwargs(["wandb", "mlflow"], run, environ=env)
    assert "mode" not in kw["wandb"] and "logging_dir" not in kw["mlflow"]
    assert mlflow_uri(run, environ=env) is None


def test_flat_config_and_record_metrics():
    flat = flat_config(
        {"lora": {"r": 8, "layers": None, "target_modules": ["q", "v"]}, "run_name": "x"}
    )
    assert flat == {
        "lora.r": 8,
        "lora.layers": "null",
        "lora.target_modules": '["q", "v"]',
        "run_name": "x",
    }
    rec = {"step": 5, "split": "validation", "accuracy": 0.5, "rows": 10, "note": "x", "ok": True}
    assert record_metrics(rec) == {"validation/accuracy": 0.5, "validation/rows": 10}


def test_tensorboard_folder_is_run_dir(tmp_path):
    from agnews_lora.tracking import accelerator_kwargs

    kw = accelerator_kwargs(["tensorboard", "wandb"], Path(tmp_path))
    tb, wandb = kw["log_with"]
    assert (tb.logging_dir_param, tb.run_name, wandb) == (str(tmp_path), "tensorboard", "wandb")
    assert accelerator_kwargs([], tmp_path) == {}
