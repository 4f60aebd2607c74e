"""Checkpoints are safetensors + JSON: a crafted one never runs code; clear advice without one."""

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from agnews_lora import checkpoint as ckpt
from agnews_lora.cli import main
from agnews_lora.errors import UserError


class _Payload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do (or worse)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"step": 10, "trainable": _Payload(marker)})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unfinished_run(trained_run: Path, tmp_path: Path, name: str) -> Path:
    """A run directory as a run killed before its first checkpoint leaves it."""
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    shutil.copy(trained_run / "config.yaml", run_dir / "config.yaml")
    (run_dir / "metrics.jsonl").write_text('{"step": 5, "split": "train", "loss": 1.3}\n')
    return run_dir


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_state_round_trips_without_unpickling(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(
        [
            {"params": [model.weight], "weight_decay": 0.01},
            {"params": [model.bias], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    state = {
        "step": 7,
        "trainable": {"w": model.weight.detach().clone()},
        "best_state": None,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "best_acc": 0.5,
        "best_metrics": {"val_accuracy": 0.5, "val_loss": float("nan")},
        "finished": False,
        "last_eval": {"accuracy": 0.5, "per_class": [0.1, 0.2]},
    }
    path = ckpt.save_checkpoint(tmp_path / "checkpoints", 7, state, keep=2)
    files = sorted(p.name for p in path.iterdir())
    assert files == ["meta.json", "state.json", "tensors.safetensors"]

    def no_pickle(*a, **k):
        raise AssertionError("a checkpoint was unpickled")

    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, name, no_pickle)
    got = ckpt.load_checkpoint(path)
    assert got["step"] == 7 and got["best_state"] is None and got["best_acc"] == 0.5
    assert torch.equal(got["trainable"]["w"], state["trainable"]["w"])
    assert got["last_eval"] == state["last_eval"] and got["scheduler"] == sched.state_dict()
    want = opt.state_dict()
    assert got["optimizer"]["param_groups"] == want["param_groups"]  # betas stay a tuple
    assert isinstance(got["optimizer"]["param_groups"][0]["betas"], tuple)
    assert got["optimizer"]["state"].keys() == want["state"].keys() == {0, 1}
    for i in want["state"]:
        for k, v in want["state"][i].items():
            assert torch.equal(got["optimizer"]["state"][i][k], v), (i, k)
    fresh = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
    fresh.load_state_dict(got["optimizer"])  # loads into a real optimizer


@pytest.mark.parametrize("variant", ["old-format state.pt", "state.json", "tensors.safetensors"])
def test_a_crafted_checkpoint_is_refused_and_never_runs(variant, trained_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # the payload is live: unpickling it does create the marker
    pickle.loads(_payload(tmp_path / "live"))
    assert (tmp_path / "live").exists()

    run_dir = _unfinished_run(trained_run, tmp_path, "crafted")
    step = run_dir / "checkpoints" / "step-0000010"
    step.mkdir(parents=True)
    bad = _payload(marker)
    if variant == "old-format state.pt":  # what this version used to write, checksum "valid"
        (step / "state.pt").write_bytes(bad)
        meta = {"format": 1, "step": 10, "sha256": _sha(bad)}
    else:
        files = {
            "state.json": json.dumps({"format": ckpt.FORMAT, "state": {}}).encode(),
            "tensors.safetensors": b"\0" * 16,
        }
        files[variant] = bad
        for f, data in files.items():
            (step / f).write_bytes(data)
        meta = {"format": ckpt.FORMAT, "step": 10, "sha256": {f: _sha(d) for f, d in files.items()}}
    (step / "meta.json").write_text(json.dumps(meta))

    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(step) in line
    if variant == "old-format state.pt":
        assert "cannot resume it" in line and "format 1" in line
    else:
        assert "cannot be read" in line
    assert not marker.exists(), "the checkpoint's pickle payload ran"


def test_a_run_killed_before_its_first_checkpoint_gets_non_circular_advice(
    trained_run, tmp_path, capsys
):
    run_dir = _unfinished_run(trained_run, tmp_path, "early")
    delete = f"delete it (`rm -r {run_dir}`) and train again"

    assert main(["evaluate", str(run_dir)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not finished" in line and delete in line and "--resume" not in line

    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no checkpoint to resume from" in line and delete in line
    assert "checkpoint_every" not in line

    again = [
        "train",
        "--config",
        str(run_dir / "config.yaml"),
        "--set",
        "run_name=early",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
        "--no-progress",
    ]
    assert main(again) == 2
    line = _one_line(capsys.readouterr().err)
    assert "already exists with an unfinished run" in line and delete in line
    assert "--resume" not in line

    # with a checkpoint, each of them says: resume it
    (run_dir / "checkpoints" / "step-0000010").mkdir(parents=True)
    resume = f"resume it with `agnews-lora train --resume {run_dir}`"
    assert main(["evaluate", str(run_dir)]) == 2
    assert resume in _one_line(capsys.readouterr().err)
    assert main(again) == 2
    assert resume in _one_line(capsys.readouterr().err)
    assert not (run_dir / "summary.json").exists() and not (run_dir / "adapter").exists()


def test_load_checkpoint_reports_a_missing_file_by_name(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 3, {"step": 3, "w": torch.ones(2)}, keep=1)
    (path / "state.json").unlink()
    with pytest.raises(UserError, match="is incomplete \\(no state.json\\)"):
        ckpt.load_checkpoint(path)
