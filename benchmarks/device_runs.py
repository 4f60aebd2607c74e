"""On a lent GPU machine: join the carried kit (``device_kit.py pack``) and run recipes in parallel.

    python3 benchmarks/device_runs.py --out $OUT                      # every recipe, by priority
    python3 benchmarks/device_runs.py --out $OUT --runs seed-script-s42 ours-top-full-s42
    python3 benchmarks/device_runs.py --list

Each recipe is one process (``train`` then ``evaluate`` on its held-out rows, like
``benchmarks/recipes.py``); ``--jobs`` of them share the GPU at a time, each with
cores / jobs CPU threads. At ``--deadline`` seconds the runs still going get SIGTERM (the run
stops cleanly) and are reported as stopped. ``--out`` receives ``results.json`` (per run: the
recipe, its status, wall time, the run's summary and its held-out metrics, plus the machine) and
``logs.tar.gz`` (each run's log, config, summary, metrics.jsonl and eval metrics; no weights), and a
table is printed. ``--set KEY=VALUE`` applies to every recipe after its own overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from device_kit import RUNS, KitError, unpack  # noqa: E402

KEEP = ("config.yaml", "summary.json", "metrics.jsonl", "eval/test/metrics.json")


def one(config: str, sets: list[str], name: str, out_dir: Path) -> int:
    """The child: train one recipe and score it on its held-out rows."""
    from agnews_lora.config import load_config
    from agnews_lora.errors import UserError
    from agnews_lora.evaluation import evaluate_run
    from agnews_lora.training import train

    try:
        cfg = load_config(
            ROOT / "configs" / config, [*sets, f"run_name={name}", f"output_dir={out_dir}"]
        )
        run = train(cfg, progress=False)
        m = evaluate_run(run.dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{name}: held-out accuracy {m['accuracy']:.4f} ({m['rows']} rows)", flush=True)
    return 0


def _install_wheels(kit: Path, site: Path) -> None:
    wheels = sorted((kit / "c1" / "wheels").glob("*.whl"))
    try:
        import datasets  # noqa: F401
    except ImportError:
        if not wheels:
            raise KitError(
                "`datasets` is not installed here and the kit carries no wheels"
            ) from None
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
        if subprocess.run(
            cmd + ["--no-compile", "--target", str(site), *map(str, wheels)]
        ).returncode:
            raise KitError(
                f"pip could not install the carried wheels {[w.name for w in wheels]}"
            ) from None
        sys.path.insert(0, str(site))
    try:  # fail here, in one line, rather than in every run: the device's own library versions
        from agnews_lora.training import train  # noqa: F401
    except Exception as e:  # noqa: BLE001
        raise KitError(f"agnews_lora does not import here: {type(e).__name__}: {e}") from None


def _machine() -> dict:
    import torch

    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
    }


def _collect(name: str, run_dir: Path) -> dict:
    got = {}
    if (run_dir / "summary.json").is_file():
        s = json.loads((run_dir / "summary.json").read_text())
        got["summary"] = {
            k: s.get(k)
            for k in (
                "params",
                "best",
                "steps",
                "epochs",
                "precision",
                "device",
                "timings",
                "versions",
                "global_batch_size",
            )
        }
    if (run_dir / "eval" / "test" / "metrics.json").is_file():
        m = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
        got["test"] = {
            k: m.get(k)
            for k in (
                "accuracy",
                "macro_f1",
                "rows",
                "per_class_f1",
                "confusion_matrix",
                "samples_per_s",
                "precision_used",
            )
        }
    return got


def run_all(names, kit, out, work, jobs, deadline, sets, python=sys.executable) -> dict:
    model = unpack(kit, work / "model")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // jobs)),
    )
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(work / "site"), env.get("PYTHONPATH", "")]
    )
    base = [f"model.name_or_path={model}", f"data.train_file={kit / 'c1' / 'train.csv'}"]
    runs_dir, t0 = work / "runs", time.time()
    runs_dir.mkdir(parents=True, exist_ok=True)
    queue, live, done = list(names), {}, {}
    while queue or live:
        while queue and len(live) < jobs and time.time() - t0 < deadline:
            name = queue.pop(0)
            config, own = RUNS[name]
            cmd = [python, __file__, "one", config, name, str(runs_dir), *own, *base, *sets]
            log = open(runs_dir / f"{name}.log", "w")
            live[name] = (
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                time.time(),
                log,
            )
            print(f"[{time.time() - t0:6.0f} s] started {name}", flush=True)
        for name, (proc, start, log) in list(live.items()):
            late = time.time() - t0 > deadline
            if late and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if proc.poll() is not None:
                log.close()
                status = (
                    "done"
                    if proc.returncode == 0
                    else ("stopped at the deadline" if late else "failed")
                )
                done[name] = {
                    "status": status,
                    "rc": proc.returncode,
                    "wall_s": round(time.time() - start, 1),
                }
                print(
                    f"[{time.time() - t0:6.0f} s] {name}: {status} (rc {proc.returncode})",
                    flush=True,
                )
                del live[name]
        if queue and time.time() - t0 >= deadline:
            for name in queue:
                done[name] = {"status": "not started (deadline)"}
            queue = []
        time.sleep(1)
    results = {
        "machine": _machine(),
        "deadline_s": deadline,
        "jobs": jobs,
        "wall_s": round(time.time() - t0, 1),
        "kit": json.loads((kit / "c1" / "manifest.json").read_text())["source"],
        "runs": [],
    }
    for name in names:
        config, own = RUNS[name]
        row = {"name": name, "config": config, "overrides": own + sets, **done[name]}
        results["runs"].append({**row, **_collect(name, runs_dir / name)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for name in names:
            for rel in (f"{name}.log", *(f"{name}/{k}" for k in KEEP)):
                if (runs_dir / rel).is_file():
                    tar.add(runs_dir / rel, arcname=rel)
    return results


def table(results: dict) -> str:
    lines = [
        f"{'recipe':<24}{'status':<26}{'steps':>7}{'val acc':>9}{'test acc':>10}{'macro-F1':>10}"
        f"{'train s':>9}{'samples/s':>11}"
    ]
    for r in results["runs"]:
        s, t = r.get("summary", {}), r.get("test", {})
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        lines.append(
            f"{r['name']:<24}{r['status']:<26}{fmt(s.get('steps'), '>7')}"
            f"{fmt((s.get('best') or {}).get('val_accuracy'), '>9.4f')}{fmt(t.get('accuracy'), '>10.4f')}"
            f"{fmt(t.get('macro_f1'), '>10.4f')}{fmt((s.get('timings') or {}).get('train_seconds'), '>9.0f')}"
            f"{fmt((s.get('timings') or {}).get('train_samples_per_s'), '>11.1f')}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["one"]:
        config, name, out_dir, *sets = argv[1:]
        return one(config, sets, name, Path(out_dir))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kit", default=str(ROOT / ".kit"))
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench-results" / "device")))
    p.add_argument("--work", default="/tmp/agnews-device", help="model folder, wheels and runs")
    p.add_argument("--runs", nargs="+", default=list(RUNS), help="recipes, in order (default: all)")
    p.add_argument("--jobs", type=int, default=4, help="recipes training at once on the one GPU")
    p.add_argument("--deadline", type=float, default=500, help="seconds; later runs are stopped")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (config, own) in RUNS.items():
            print(f"{name:<24}{config:<34}{' '.join(own)}")
        return 0
    unknown = [n for n in args.runs if n not in RUNS]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {list(RUNS)}")
    work = Path(args.work)
    try:
        _install_wheels(Path(args.kit), work / "site")
        results = run_all(
            args.runs, Path(args.kit), Path(args.out), work, args.jobs, args.deadline, args.set
        )
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results))
    print(f"wrote {Path(args.out) / 'results.json'} and logs.tar.gz")
    return 0 if all(r["status"] == "done" for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
