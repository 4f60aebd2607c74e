"""Checkpoints and resume: SIGKILL mid-run, SIGTERM, corrupt checkpoints."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from helpers import set_args
from safetensors.torch import load_file

from agnews_lora.cli import main

# enough for what each test needs: a few rotated checkpoints, a kill well after the first one and
# well before the end, evaluations that pick a best step (300 steps took 7 minutes on a slow CI CPU)
STEPS = 80


def _args(tiny_model_dir, data_dir, tmp_path, name, **extra):
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{
            "run_name": name,
            "train.max_steps": STEPS,
            "train.checkpoint_every": 10,
            "train.keep_checkpoints": 2,
            "train.eval_every": 20,
            "train.log_every": 5,
            "train.precision": "fp32",
            **extra,
        },
    )
    return set_args(sets)


def _spawn(args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "agnews_lora", "train", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    from agnews_lora.runs import read_metrics

    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = read_metrics(run_dir / "metrics.jsonl")
        if rows and rows[-1]["step"] >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise TimeoutError(f"run did not reach step {step}")


def _adapter(run_dir: Path) -> dict:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    assert main(["train", "--no-progress", *_args(tiny_model_dir, data_dir, tmp, "ref")]) == 0
    return tmp / "runs" / "ref"


def test_sigkill_then_resume_equals_uninterrupted_run(
    reference_run, tiny_model_dir, data_dir, tmp_path
):
    kill_at = random.Random().randint(15, 55)
    run_dir = tmp_path / "runs" / "killed"
    proc = _spawn(_args(tiny_model_dir, data_dir, tmp_path, "killed"))
    try:
        _wait_for_step(run_dir, kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not (run_dir / "summary.json").exists()
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0, (
        f"killed at step {kill_at}"
    )

    ref, got = _adapter(reference_run), _adapter(run_dir)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(
            got[k], ref[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs (killed at step {kill_at})"
        )
    from agnews_lora.runs import read_metrics

    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"]
    assert (
        steps == sorted(set(steps)) and steps[-1] == STEPS
    )  # no duplicated lines after the resume


def test_sigterm_saves_a_checkpoint_and_reports_it(tiny_model_dir, data_dir, tmp_path):
    run_dir = tmp_path / "runs" / "term"
    proc = _spawn(
        _args(tiny_model_dir, data_dir, tmp_path, "term", **{"train.checkpoint_every": 1000})
    )
    _wait_for_step(run_dir, 20, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "checkpoint saved" in err and "--resume" in err and "Traceback" not in err
    from agnews_lora.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert len(ckpts) == 1 and 20 <= ckpts[0][0] < STEPS
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert (run_dir / "summary.json").is_file()


def test_checkpoints_are_rotated_and_leftovers_ignored(reference_run):
    from agnews_lora.checkpoint import list_checkpoints

    steps = [s for s, _ in list_checkpoints(reference_run / "checkpoints")]
    assert (
        steps[-2:] == [STEPS - 20, STEPS - 10] and len(steps) <= 3
    )  # last K=2, plus the best step's
    assert not list((reference_run / "checkpoints").glob(".tmp-*"))


def test_corrupt_checkpoint_is_a_clear_error(reference_run, tmp_path, capsys):
    import shutil

    # the reference run's checkpoints, without the summary that marks it finished: as after a kill
    run_dir = Path(shutil.copytree(reference_run, tmp_path / "corrupt"))
    (run_dir / "summary.json").unlink()
    from agnews_lora.checkpoint import latest_checkpoint

    state = latest_checkpoint(run_dir / "checkpoints") / "tensors.safetensors"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is corrupt (tensors.safetensors fails its checksum" in err
    assert len(err.strip().splitlines()) == 1

    (state.parent / "meta.json").unlink()
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert "is incomplete" in capsys.readouterr().err


def test_resume_refuses_finished_runs_and_runs_without_checkpoints(trained_run, tmp_path, capsys):
    assert main(["train", "--resume", str(trained_run)]) == 2
    assert "already finished" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not an agnews-lora run directory" in capsys.readouterr().err


def test_a_failed_export_keeps_the_trained_weights_and_resume_writes_them(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    """Training finished but writing merged/ failed (full disk, ...): a checkpoint keeps the work; --resume exports."""
    import agnews_lora.export as export

    real = export.save_adapter_and_merged

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "save_adapter_and_merged", disk_full)
    run_dir = tmp_path / "runs" / "export-fails"
    args = _args(
        tiny_model_dir,
        data_dir,
        tmp_path,
        "export-fails",
        **{"train.max_steps": 40, "train.eval_every": 20, "train.checkpoint_every": "null"},
    )
    assert main(["train", *args, "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    assert not (run_dir / "summary.json").exists()

    monkeypatch.setattr(export, "save_adapter_and_merged", real)
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    from agnews_lora.runs import read_metrics

    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert (
        summary["steps"] == 40 and summary["final_validation"]["rows"] > 0
    )  # no extra training after the resume
    assert (run_dir / "merged" / "config.json").is_file()
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"][
        -1
    ] == 40
