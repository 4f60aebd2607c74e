"""`agnews-lora tune`: an Optuna study over budget-checked LoRA layouts on the tiny model."""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

from agnews_lora.cli import main
from agnews_lora.config import load_config
from agnews_lora.errors import TrainingInterrupted, UserError

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install -e '.[tune]')")

from agnews_lora import tune as tune_mod  # noqa: E402
from agnews_lora.tune_space import load_tune  # noqa: E402

STEPS = 20


def _write(tmp: Path, model_dir: Path, train_csv: Path, body: str, **extra) -> Path:
    sets = tiny_overrides(
        model_dir,
        train_csv,
        tmp,
        **{"train.max_steps": STEPS, "train.eval_every": 10, "train.precision": "fp32", **extra},
    )
    overrides = "\n".join(f"  - {json.dumps(s)}" for s in sets if not s.startswith("output_dir="))
    path = tmp / "tiny-tune.yaml"
    path.write_text(f"heartbeat_seconds: 1\noverrides:\n{overrides}\n{body}", encoding="utf-8")
    return path


def _csv(path: Path) -> dict[str, dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def _study(path: Path, out: Path, **kw):
    spec = load_tune(path, out, **kw)
    return spec, tune_mod.open_study(spec)


LAYOUT = """layout:
  r: [1, 16, 256]
  target_modules: ["q,v", "q,k,v"]
  layers: [all]
"""


def test_grid_study_never_trains_over_budget_layouts(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    import agnews_lora.training as training

    path = _write(
        tmp_path,
        tiny_model_dir,
        data_dir / "train.csv",
        "sampler: grid\nseed: 3\npruner: none\n" + LAYOUT,
    )
    counts = load_tune(
        path, tmp_path / "probe"
    ).layouts.counts  # exact counts, budget 1M: everything fits
    budget = (
        counts[("16", "q,v", "all", "full")] + counts[("16", "q,k,v", "all", "full")]
    ) // 2  # r16 q,v fits, q,k,v not
    assert (
        counts[("16", "q,v", "all", "full")]
        <= budget
        < counts[("16", "q,k,v", "all", "full")]
        < counts[("256", "q,v", "all", "full")]
    )
    trained = []
    real_train = training.train
    monkeypatch.setattr(
        training,
        "train",
        lambda cfg, **kw: trained.append(cfg.to_dict()["lora"]) or real_train(cfg, **kw),
    )
    out = tmp_path / "study"
    rc = main(
        [
            "tune",
            str(path),
            "--output-dir",
            str(out),
            "--no-progress",
            "--set",
            f"budget.max_trainable_params={budget}",
        ]
    )
    assert rc == 0
    rows = _csv(out / "summary.csv")
    assert len(rows) == 4  # the grid after r=256 (over budget in every layout) was dropped
    by_layout = {(r["lora.r"], r["lora.target_modules"]): r for r in rows.values()}
    assert set(by_layout) == {("1", "q,v"), ("1", "q,k,v"), ("16", "q,v"), ("16", "q,k,v")}
    over = by_layout[("16", "q,k,v")]
    assert over["status"] == "over_budget" and int(over["trainable_params"]) > budget == int(
        over["budget"]
    )
    assert over["run_dir"] == "" and "over budget" in over["error"]
    assert len(trained) == 3 and all(
        not (t["r"] == 16 and "key" in t["target_modules"]) for t in trained
    )
    assert sorted(p.name for p in out.glob("trial-*")) == sorted(
        r["name"] for r in rows.values() if r["status"] == "ok"
    )
    for r in rows.values():
        if r["status"] == "ok":
            assert int(r["trainable_params"]) <= budget and r["steps"] == str(STEPS)
            assert json.loads((Path(r["run_dir"]) / "summary.json").read_text())["params"][
                "trainable"
            ] == int(r["trainable_params"])
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert md.startswith("# Tuning study") and "over_budget" in md and "`lora.r=256`" in md
    assert "- tune file: " in md and "- trials: " in md and "sweep file" not in md
    best = max(
        (r for r in rows.values() if r["status"] == "ok"), key=lambda r: float(r["val_accuracy"])
    )
    cfg = load_config(out / "best_config.yaml")  # ready to use with `train --config`
    assert (cfg.lora.r, ",".join(cfg.lora.target_modules)) == (
        int(best["lora.r"]),
        "query,value" if best["lora.target_modules"] == "q,v" else "query,key,value",
    )
    assert (
        cfg.run_name is None
        and cfg.budget.max_trainable_params == budget
        and cfg.train.max_steps == STEPS
    )


def test_bad_evaluations_prune_the_trial(tiny_model_dir, data_dir, tmp_path):
    body = (
        "pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}\nn_trials: 1\n"
        "layout: {r: [2], target_modules: ['q,v'], layers: [all]}\n"
    )
    path = _write(tmp_path, tiny_model_dir, data_dir / "train.csv", body)
    out = tmp_path / "study"
    spec, study = _study(path, out)
    # an earlier trial, perfect at every evaluation: anything worse is pruned at its first one
    study.add_trial(
        optuna.trial.create_trial(
            params={
                "lora.r": "2",
                "lora.target_modules": "q,v",
                "lora.layers": "all",
                "lora.head": "full",
            },
            distributions={
                k: optuna.distributions.CategoricalDistribution(list(v))
                for k, v in spec.layouts.dims.items()
            },
            value=1.0,
            intermediate_values={10: 1.0, 20: 1.0},
        )
    )
    spec.n_trials = 2
    study, _ = tune_mod.run_study(spec)
    trial = study.trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["status"] == "pruned"
    assert list(trial.intermediate_values) == [10] and trial.intermediate_values[10] < 1.0
    run_dir = Path(trial.user_attrs["run_dir"])
    assert run_dir.name == "trial-0001" and not (run_dir / "summary.json").exists()
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(e["step"] for e in evals) == 10  # stopped at the first evaluation, not at step 20
    rows, _ = tune_mod.write_study_reports(spec, study)
    assert [r["status"] for r in rows] == ["ok", "pruned"]


def test_interrupted_study_resumes_the_trial_from_its_checkpoint(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    import agnews_lora.training as training

    body = "n_trials: 1\nlayout: {r: [2], target_modules: ['q,v'], layers: [all]}\n"
    path = _write(tmp_path, tiny_model_dir, data_dir / "train.csv", body)
    out = tmp_path / "study"
    real_train = training.train

    def ctrl_c_at_first_eval(cfg, on_eval=None, **kw):  # SIGTERM arrives while trial 0 trains
        def hook(step, metrics):
            on_eval(step, metrics)
            os.kill(os.getpid(), signal.SIGTERM)

        return real_train(cfg, on_eval=hook, **kw)

    monkeypatch.setattr(training, "train", ctrl_c_at_first_eval)
    with pytest.raises(TrainingInterrupted):
        tune_mod.run_study(load_tune(path, out))
    assert not (out / "trial-0000" / "summary.json").exists() and list(
        (out / "trial-0000" / "checkpoints").iterdir()
    )
    monkeypatch.setattr(training, "train", real_train)
    study, objective = tune_mod.run_study(load_tune(path, out))  # the same command again
    first, retry = study.trials
    assert (
        first.state == optuna.trial.TrialState.FAIL and first.user_attrs["status"] == "interrupted"
    )
    assert (
        retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["status"] == "resumed"
    )
    assert retry.user_attrs["run_dir"] == str(out / "trial-0000") and objective.trained == [
        str(out / "trial-0000")
    ]
    summary = json.loads((out / "trial-0000" / "summary.json").read_text())
    assert summary["steps"] == STEPS and retry.value == summary["best"]["val_accuracy"]
    assert not (out / "trial-0001").exists()


def test_killed_worker_trial_is_failed_and_retried(tiny_model_dir, data_dir, tmp_path):
    body = "n_trials: 1\nlayout: {r: [2], target_modules: ['q,v'], layers: [all]}\n"
    path = _write(
        tmp_path, tiny_model_dir, data_dir / "train.csv", body, **{"train.max_steps": 400}
    )
    out = tmp_path / "study"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agnews_lora",
            "tune",
            str(path),
            "--output-dir",
            str(out),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not (out / "trial-0000" / "metrics.jsonl").exists()
        and worker.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.5)
    worker.kill()  # SIGKILL mid-trial: no handler runs, the trial stays RUNNING in the database
    worker.wait()
    assert (out / "trial-0000" / "config.yaml").exists()
    time.sleep(3)  # past the grace period (2 heartbeats)
    spec = load_tune(path, out, sets=["train.max_steps=20"])
    with pytest.raises(UserError, match="created with another objective"):
        tune_mod.run_study(dataclasses.replace(spec, objective="accuracy,params"))
    study, _ = tune_mod.run_study(spec)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].system_attrs["failed_trial"] == 0
    rows = {r["name"]: r for r in tune_mod.write_study_reports(spec, study)[0]}
    assert rows["trial-0000"]["status"] == "failed" and "heartbeat" in rows["trial-0000"]["error"]


def test_bad_tune_files_are_user_errors(tiny_model_dir, data_dir, tmp_path):
    cases = [
        ("layouts: {r: [1]}\n", "unknown key 'layouts' (did you mean 'layout'?)"),
        ("objective: loss\n", "objective must be one of"),
        ("params: {train.learning_rate: {low: 1, high: 0.1}}\n", "low < high"),
        ("params: {train.learnin_rate: [0.1]}\n", "unknown config key"),
        ("params: {lora.r: [1, 2]}\n", "belongs under 'layout'"),
        ("layout: {target_modules: [qv]}\n", "is not one of"),
        ("layout: {r: [64]}\n", "no layout fits"),
    ]
    for body, message in cases:
        path = _write(tmp_path, tiny_model_dir, data_dir / "train.csv", body)
        with pytest.raises(UserError) as e:
            load_tune(path, tmp_path / "o", sets=["budget.max_trainable_params=2000"])
        assert message in str(e.value) and "\n" not in str(e.value), body
    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2


def test_shipped_tune_file_is_valid(monkeypatch, tmp_path):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    spec = load_tune(root / "configs" / "tune" / "offline-minilm.yaml", tmp_path)
    assert (
        spec.n_trials
        and spec.layouts.fitting()
        and spec.base.budget.max_trainable_params == 1_000_000
    )
    assert any(
        n > spec.layouts.budget for n in spec.layouts.counts.values()
    )  # over-budget combos are counted
    assert {"train.learning_rate", "train.warmup_ratio", "lora.dropout"} <= {
        p.key for p in spec.params
    }


# ---------------------------------------------------------------------------------------------
# two workers, one PostgreSQL study


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "PostgreSQL server programs (initdb, pg_ctl) not found: "
            "apt-get install postgresql (.ci/run does)"
        )
    pytest.importorskip("psycopg", reason="psycopg (3) is not installed (pip install -e '.[tune]')")
    root = Path(tempfile.mkdtemp(prefix="agnews-pg-"))
    prefix = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        prefix
        + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        prefix
        + [
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tiny_model_dir, data_dir, tmp_path, postgres_url):
    body = (
        "sampler: random\nseed: 0\npruner: none\n"
        "layout: {r: [1, 2, 4], target_modules: ['q,v', 'q,k,v'], layers: [all]}\n"
        "params: {train.learning_rate: {low: 0.001, high: 0.03, log: true}}\n"
    )
    path = _write(tmp_path, tiny_model_dir, data_dir / "train.csv", body)
    n = 4
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agnews_lora",
                "tune",
                str(path),
                "--storage",
                postgres_url,
                "--n-trials",
                str(n),
                "--output-dir",
                str(tmp_path / f"worker{i}"),
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    study = optuna.load_study(study_name="tiny-tune", storage=postgres_url)
    trials = study.trials
    assert n <= len(trials) <= n + 1  # each worker checks the total after its own trial
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(dirs)) == len(dirs) and all((d / "summary.json").is_file() for d in dirs)
    per_worker = {
        i: sorted(p.name for p in (tmp_path / f"worker{i}").glob("trial-*")) for i in range(2)
    }
    assert not set(per_worker[0]) & set(per_worker[1])  # no trial ran twice
    assert sorted(per_worker[0] + per_worker[1]) == sorted(d.name for d in dirs)
    assert per_worker[0] and per_worker[1], per_worker  # both did work
    for i in range(2):  # each worker's report lists the whole study
        assert len(_csv(tmp_path / f"worker{i}" / "summary.csv")) == len(trials)
