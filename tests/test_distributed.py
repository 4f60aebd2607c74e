"""Data-parallel training on CPU (gloo) through torchrun, against a single process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_overrides
from helpers import set_args

from agnews_lora.cli import main
from agnews_lora.runs import read_metrics


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    from agnews_lora.tiny import build_tiny_roberta

    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-nodrop") / "model", dropout=0.0)


def _sets(model, data_dir, tmp, name, **extra):
    sets = tiny_overrides(
        model,
        data_dir / "train.csv",
        tmp,
        **{
            "run_name": name,
            "train.max_steps": 60,
            "train.eval_every": 20,
            "train.log_every": 5,
            "train.precision": "fp32",
            "train.per_device_batch_size": 8,
            "lora.dropout": 0.0,
            "data.val_size": 77,
            **extra,
        },
    )
    return set_args(sets)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_process_gloo_run_matches_single_process_with_same_global_batch(
    no_dropout_model, data_dir, tmp_path
):
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    ddp = _run(
        [
            *torchrun,
            "-m",
            "agnews_lora",
            "train",
            "--no-progress",
            *_sets(no_dropout_model, data_dir, tmp_path, "ddp"),
        ]
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the single process runs in this one (no second start-up of torch and transformers)
    single = _sets(no_dropout_model, data_dir, tmp_path, "single", **{"train.grad_accumulation": 2})
    assert main(["train", "--no-progress", *single]) == 0

    d, s = tmp_path / "runs" / "ddp", tmp_path / "runs" / "single"
    sd, ss = (
        json.loads((d / "summary.json").read_text()),
        json.loads((s / "summary.json").read_text()),
    )
    assert (
        sd["world_size"] == 2 and sd["global_batch_size"] == 16 and sd["per_device_batch_size"] == 8
    )
    assert ss["world_size"] == 1 and ss["global_batch_size"] == 16
    # the same micro-batches are summed in both set-ups, so the curves agree up to float reduction order
    ld = [
        (r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"
    ]
    ls = [
        (r["step"], r["loss"]) for r in read_metrics(s / "metrics.jsonl") if r["split"] == "train"
    ]
    assert [x for x, _ in ld] == [x for x, _ in ls]
    for (step, a), (_, b) in zip(ld, ls):
        assert abs(a - b) < 1e-3, f"step {step}: 2-process loss {a} vs single {b}"
    assert ld[-1][1] < ld[0][1]
    # evaluation covers every validation row exactly once (77 rows: not divisible by 2 processes)
    for r in read_metrics(d / "metrics.jsonl"):
        if r["split"] == "validation":
            assert r["rows"] == 77
    vd = [r["accuracy"] for r in read_metrics(d / "metrics.jsonl") if r["split"] == "validation"]
    vs = [r["accuracy"] for r in read_metrics(s / "metrics.jsonl") if r["split"] == "validation"]
    assert max(abs(a - b) for a, b in zip(vd, vs)) <= 2 / 77
    # only the main process writes and talks
    assert ddp.stdout.count("best val") == 1
    assert "Traceback" not in ddp.stderr


RANK_PROBE_HOOK = '''
import importlib.abc, importlib.util, os, pathlib, sys


class _Hook(importlib.abc.MetaPathFinder):
    """rank 0's probe finds bf16 4x faster, every other rank's 0.5x; each rank logs its precision"""

    names = {"agnews_lora.devices", "agnews_lora.training"}

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        self.names.discard(name)
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        orig = spec.loader.exec_module

        def exec_module(module):
            orig(module)
            if name == "agnews_lora.devices":
                module.bf16_speedup = lambda *a, **k: 4.0 if os.environ["RANK"] == "0" else 0.5
            else:
                setup = module.setup

                def logged(*args, **kwargs):
                    loop = setup(*args, **kwargs)
                    out = pathlib.Path(os.environ["PRECISION_LOG"]) / ("rank" + os.environ["RANK"])
                    out.write_text(loop.precision)
                    return loop

                module.setup = logged

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Hook())
'''


def test_every_process_trains_at_rank_0s_precision_when_their_probes_disagree(
    no_dropout_model, data_dir, tmp_path
):
    hook, log = tmp_path / "hook", tmp_path / "precision"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(RANK_PROBE_HOOK)
    sets = _sets(
        no_dropout_model,
        data_dir,
        tmp_path,
        "auto",
        **{"train.precision": "auto", "train.max_steps": 4, "train.eval_every": 4},
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PRECISION_LOG": str(log),
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "agnews_lora", "train", "--no-progress", *sets],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in log.iterdir()} == {"rank0": "bf16", "rank1": "bf16"}
    summary = json.loads((tmp_path / "runs" / "auto" / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["world_size"] == 2
    assert "auto: bf16 matmuls measured 4.0x fp32's pace" in proc.stdout + proc.stderr
