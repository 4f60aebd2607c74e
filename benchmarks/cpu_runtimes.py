#!/usr/bin/env python
"""CPU inference throughput and agreement: PyTorch vs ONNX Runtime vs OpenVINO, fp32 and int8.

    python benchmarks/cpu_runtimes.py --run RUN_DIR [--data FILE] [--rows N] [--threads N]
                                      [--batch-size 128] [--no-export] [--json FILE]

One process, one run, the same rows (``--data``: a labelled CSV / JSONL / Parquet file; default
the run's own test split), the same tokenisation and length-sorted batching for every backend:

* ``torch-fp32``: `Predictor` on the merged model in fp32; ``torch-<default>``: `Predictor` at
  its default precision (bf16 where the CPU has it; the row is left out when that is fp32);
* ``onnx``, ``onnx-int8``, ``openvino``, ``openvino-int8``: the run's exports
  (``RUN_DIR/export/<name>/``), made here first when missing unless ``--no-export``; a backend
  whose package is not installed is reported as skipped.

Each backend is loaded, warmed up on 64 texts, then timed over all the rows, tokenisation
included; the next is loaded only after the previous one is released. Reported per backend:
samples/s, the ratio to ``torch-fp32`` and to PyTorch's default precision, held-out accuracy,
and label agreement and max |Δ probability| against ``torch-fp32`` on the same rows.

The machine may be shared: the JSON records ``os.getloadavg()`` before and after each backend;
compare ratios taken in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without `pip install -e .` too

import _common as C  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNTIMES = [("onnx", False), ("onnx", True), ("openvino", False), ("openvino", True)]


def torch_runner(run_dir: str, precision: str, batch_size: int):
    from agnews_lora.prediction import Predictor

    p = Predictor.from_run(run_dir, batch_size=batch_size, precision=precision)
    return lambda texts: p.logits(texts)[0]


def runtime_runner(
    run_dir: str, fmt: str, int8: bool, batch_size: int, threads: int | None, export: bool
):
    """``(None, logits_fn)``, or ``(reason, None)`` when this runtime cannot run here."""
    from transformers import AutoTokenizer

    from agnews_lora.backends import load_backend
    from agnews_lora.errors import UserError
    from agnews_lora.onnx_export import export_model
    from agnews_lora.runtimes import backend_logits, export_dir

    path = export_dir(run_dir, fmt, int8)
    try:
        if not (path / "export.json").is_file():
            if not export:
                return f"no export in {path} (--no-export)", None
            print(f"exporting {path.name} ...", file=sys.stderr, flush=True)
            export_model(run_dir, fmt, int8)
        backend = load_backend(run_dir, fmt, int8, threads=threads)
    except UserError as e:
        return str(e), None
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_length = backend.info["max_length"]
    return None, lambda texts: backend_logits(backend, tokenizer, texts, max_length, batch_size)


def measure(fn, texts: list[str]) -> tuple[np.ndarray, float]:
    fn(texts[:64])  # warm-up: first-call allocations, kernel selection
    t0 = time.perf_counter()
    logits = fn(texts)
    return logits, time.perf_counter() - t0


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished run directory")
    ap.add_argument("--data", help="labelled rows (default: the run's test split)")
    ap.add_argument("--rows", type=int, default=2000, help="first N rows of --data (0 = all)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="threads for every backend")
    ap.add_argument("--no-export", action="store_true", help="skip runtimes without an export")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()

    import torch

    from agnews_lora.data import load_test_split
    from agnews_lora.devices import resolve_precision
    from agnews_lora.runs import load_finished_run

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, _ = load_finished_run(args.run)
    table = load_test_split(cfg, args.data)
    n = len(table) if args.rows <= 0 else min(args.rows, len(table))
    texts, labels = list(table.texts[:n]), np.asarray(table.labels[:n])

    plan = [("torch-fp32", lambda: (None, torch_runner(args.run, "fp32", args.batch_size)))]
    default = resolve_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")
    if default != "fp32":
        plan.append(
            (f"torch-{default}", lambda: (None, torch_runner(args.run, "auto", args.batch_size)))
        )
    for fmt, int8 in RUNTIMES:
        plan.append(
            (
                fmt + ("-int8" if int8 else ""),
                lambda f=fmt, q=int8: runtime_runner(
                    args.run, f, q, args.batch_size, args.threads, not args.no_export
                ),
            )
        )

    results, ref = [], None
    for name, make in plan:
        skipped, fn = make()
        if fn is None:
            results.append({"backend": name, "skipped": skipped})
            continue
        load_before = C.loadavg()
        logits, seconds = measure(fn, texts)
        del fn
        gc.collect()
        if ref is None:
            ref = logits
        p, q = softmax(logits.astype(np.float64)), softmax(ref.astype(np.float64))
        results.append(
            {
                "backend": name,
                "rows": n,
                "seconds": round(seconds, 3),
                "samples_per_s": round(n / max(seconds, 1e-9), 1),
                "accuracy": float((logits.argmax(1) == labels).mean()),
                "agreement_vs_torch_fp32": float((logits.argmax(1) == ref.argmax(1)).mean()),
                "max_abs_prob_diff_vs_torch_fp32": float(np.abs(p - q).max()),
                "loadavg_before": load_before,
                "loadavg_after": C.loadavg(),
            }
        )
    base = {r["backend"]: r["samples_per_s"] for r in results if "samples_per_s" in r}
    default_name = f"torch-{default}" if default != "fp32" else "torch-fp32"
    for r in results:
        if "samples_per_s" in r:
            r["vs_torch_fp32"] = round(r["samples_per_s"] / base["torch-fp32"], 2)
            r["vs_torch_default"] = round(r["samples_per_s"] / base[default_name], 2)

    print(
        f"{n} rows of {args.data or 'the test split'}; threads {args.threads or 'default'}; "
        f"PyTorch default precision {default}"
    )
    print(
        f"{'backend':<16}{'samples/s':>10}{'x fp32':>8}{'x default':>10}{'accuracy':>10}"
        f"{'agree':>8}{'max|Δp|':>10}"
    )
    for r in results:
        if "skipped" in r:
            print(f"{r['backend']:<16}  skipped: {r['skipped']}")
            continue
        print(
            f"{r['backend']:<16}{r['samples_per_s']:>10.1f}{r['vs_torch_fp32']:>8.2f}"
            f"{r['vs_torch_default']:>10.2f}{r['accuracy']:>10.4f}"
            f"{r['agreement_vs_torch_fp32']:>8.4f}{r['max_abs_prob_diff_vs_torch_fp32']:>10.2g}"
        )
    if args.json:
        report = {
            "run": str(args.run),
            "data": args.data or "test split",
            "rows": n,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "torch_default_precision": default,
            "machine": C.machine_info(),
            "results": results,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
