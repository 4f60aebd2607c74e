#!/usr/bin/env python
"""Training and inference throughput of agnews-lora, side by side with the seed recipes.

    python benchmarks/throughput.py --model {tiny,minilm,roberta-base-shape} [--quick] [--json FILE]

One command, one machine, one model, one set of rows (the shared AG News rows, else synthetic
ones), one batch size; three styles, each in its own subprocess (so that each has its own
peak RSS), run one after the other:

1. ``seed_notebook``: fp32, every row padded to ``max_length`` (512), random batches; inference
   on the unmerged PEFT model under ``no_grad``, same padding.
2. ``trainer``: what ``transformers.Trainer`` does by default: fp32, ``DataCollatorWithPadding``
   (pad to the longest row of each batch), random batches; inference on the unmerged PEFT model.
3. ``ours``: the project's own code path with its defaults: the Accelerate-prepared model of
   ``agnews_lora.training.Loop`` (built by ``setup``) (bf16 where `auto` measures it faster), length-grouped
   batches from ``train_batches(..., group_by_length=True)``, ``collate`` padding to a multiple
   of 16; inference through ``Predictor`` on the merged model (``inference_mode``, sorted
   batches, SDPA, bf16).

Same LoRA layout for all (the config defaults: r=8 on query/value), same optimizer settings
(AdamW, linear warm-up schedule, gradient clipping at 1.0).  Warm-up steps are not timed.
Throughput over the timed steps; with ``--repeats`` the styles run in rotation and the median
of the repeats is reported.  Model FLOP utilisation (MFU) = real model FLOPs per second (pad
tokens excluded, see ``_common.py``) / the peak matmul FLOP/s of the same dtype, measured in the
same process just before and just after the timed training (the larger of the two).

With a CUDA GPU present the styles run there, on ``GPU_PLANS`` (more timed steps, the peak measured on
larger matrices, the GPU synchronised around each timed step) and peak GPU memory is reported too.

Each style's process runs ``_throughput_worker.py`` (the timed work, measured with
``_throughput_measure.py``); this file is the parent, and ``_throughput_report.py`` the report.

The machine is shared: the JSON records ``os.getloadavg()`` per style; compare ratios taken in
one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without `pip install -e .` as well

import _common as C  # noqa: E402
from _throughput_report import (  # noqa: E402
    STYLES,
    _versions,
    aggregate,
    ratios,
    sweep_table,
    table,
    targets,
)
from _throughput_setup import (  # noqa: E402
    check_token_cache,
    load_rows,
    padding_stats,
    prepare_model,
    quiet,
    say,
)
from _throughput_worker import Plan, _jsonable, torch_cuda, worker  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS = ("tiny", "minilm", "roberta-base-shape")


PLANS = {
    ("tiny", True): Plan(
        max_rows=2000,
        eval_rows=128,
        peak_sizes=(256, 512),
        peak_reps=3,
        extras=False,
        train={"seed_notebook": (1, 2), "trainer": (1, 3), "ours": (1, 4)},
        infer={"seed_notebook": (64, 1), "trainer": (128, 1), "ours": (128, 1)},
    ),
    ("tiny", False): Plan(
        eval_rows=2048,
        repeats=2,
        train={"seed_notebook": (3, 20), "trainer": (5, 40), "ours": (10, 80)},
        infer={"seed_notebook": (512, 2), "trainer": (2048, 2), "ours": (2048, 3)},
    ),
    ("minilm", True): Plan(
        eval_rows=512,
        peak_sizes=(1024, 2048),
        peak_reps=4,
        extras=False,
        seed_warmup_rows=4,
        train={"seed_notebook": (1, 1), "trainer": (1, 4), "ours": (3, 20)},
        infer={"seed_notebook": (32, 1), "trainer": (128, 1), "ours": (512, 2)},
    ),
    ("minilm", False): Plan(
        eval_rows=2048,
        repeats=2,
        train={"seed_notebook": (1, 2), "trainer": (2, 12), "ours": (8, 60)},
        infer={"seed_notebook": (64, 1), "trainer": (512, 1), "ours": (2048, 3)},
    ),
    # roberta-base shape: a 32 x 512 fp32 training step needs more than this machine's 23 GB of RAM (it was
    # OOM-killed), so the seed style accumulates its batch of 32 in 4 micro-batches of 8: same math per step.
    ("roberta-base-shape", True): Plan(
        eval_rows=256,
        peak_sizes=(1024, 2048),
        peak_reps=4,
        extras=False,
        seed_warmup_rows=4,
        seed_micro_batch=8,
        train={"seed_notebook": (1, 1), "trainer": (1, 2), "ours": (2, 8)},
        infer={"seed_notebook": (16, 1), "trainer": (64, 1), "ours": (256, 1)},
    ),
    ("roberta-base-shape", False): Plan(
        eval_rows=1024,
        repeats=1,
        extras=False,
        seed_warmup_rows=4,
        seed_micro_batch=8,
        train={"seed_notebook": (1, 2), "trainer": (2, 8), "ours": (6, 60)},
        infer={"seed_notebook": (64, 1), "trainer": (256, 1), "ours": (1024, 2)},
    ),
}

# On a CUDA GPU the CPU plans' few steps take a second or two: time more steps, measure the peak on large
# matrices, and give the seed style its batch in one piece (80 GB of GPU memory hold a 32 x 512 fp32 step).
_GPU_STEPS = dict(
    peak_sizes=(4096, 8192),
    peak_reps=10,
    seed_warmup_rows=None,
    seed_micro_batch=None,
    extras=False,
)
GPU_PLANS = {
    ("tiny", True): PLANS[("tiny", True)],
    ("tiny", False): PLANS[("tiny", False)],
    ("minilm", True): Plan(
        eval_rows=2048,
        **_GPU_STEPS,
        train={"seed_notebook": (2, 10), "trainer": (3, 40), "ours": (10, 120)},
        infer={"seed_notebook": (512, 1), "trainer": (2048, 1), "ours": (2048, 2)},
    ),
    ("minilm", False): Plan(
        eval_rows=2048,
        repeats=2,
        **_GPU_STEPS,
        train={"seed_notebook": (3, 20), "trainer": (5, 60), "ours": (20, 300)},
        infer={"seed_notebook": (2048, 2), "trainer": (2048, 3), "ours": (2048, 5)},
    ),
    ("roberta-base-shape", True): Plan(
        eval_rows=2048,
        **_GPU_STEPS,
        train={"seed_notebook": (2, 10), "trainer": (3, 30), "ours": (10, 100)},
        infer={"seed_notebook": (512, 1), "trainer": (2048, 1), "ours": (2048, 2)},
    ),
    ("roberta-base-shape", False): Plan(
        eval_rows=2048,
        repeats=2,
        **_GPU_STEPS,
        train={"seed_notebook": (3, 20), "trainer": (5, 80), "ours": (20, 250)},
        infer={"seed_notebook": (2048, 2), "trainer": (2048, 3), "ours": (2048, 5)},
    ),
}


# =============================================================================================
# the parent: one subprocess per style (model and rows: _throughput_setup; report: _throughput_report)


def run_worker(style: str, spec_path: Path, workdir: Path, repeat: int) -> dict:
    out = workdir / f"result-{style}-{repeat}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        style,
        "--spec",
        str(spec_path),
        "--out",
        str(out),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        say(proc.stdout[-4000:])
        say(proc.stderr[-8000:])
        hint = " (killed by SIGKILL: probably out of memory)" if proc.returncode == -9 else ""
        raise SystemExit(f"style '{style}' failed (exit {proc.returncode}){hint}")
    result = json.loads(out.read_text())
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=MODELS, default="minilm")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps and rows (minilm: under 3 minutes on 2 CPU cores)",
    )
    p.add_argument("--json", metavar="FILE", help="write the full results here")
    p.add_argument(
        "--repeats",
        type=int,
        help="run the three styles this many times in rotation (default: per plan)",
    )
    p.add_argument(
        "--styles", default=",".join(STYLES), help="comma-separated subset of " + ", ".join(STYLES)
    )
    p.add_argument("--data", help="labelled CSV (text,label) instead of the shared AG News rows")
    p.add_argument("--batch-size", type=int, help="training batch size for all styles (default 32)")
    p.add_argument(
        "--pad-sweep",
        metavar="M,M,...",
        help="instead of the three styles: our training loop with train.pad_to_multiple_of = each M, "
        "interleaved in one process on the same batches (e.g. 16,8,1)",
    )
    p.add_argument("--sweep-rounds", type=int, default=4, help="--pad-sweep: rounds (default 4)")
    p.add_argument(
        "--sweep-steps",
        type=int,
        default=15,
        help="--pad-sweep: steps per setting per round (default 15)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quiet()
    if args.worker:
        return worker(args.worker, Path(args.spec), Path(args.out))

    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    bad = [s for s in styles if s not in STYLES]
    if bad:
        p.error(f"unknown style(s) {bad}; choose from {', '.join(STYLES)}")
    plan = (GPU_PLANS if torch_cuda() else PLANS)[(args.model, args.quick)]
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.batch_size:
        plan = replace(plan, batch_size=args.batch_size)
    t_start = time.perf_counter()
    load_start = C.loadavg()

    from agnews_lora.modeling import load_model_config, load_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="agnews-bench-"))
    try:
        model_path, model_desc = prepare_model(args.model, workdir)
        tokenizer = load_tokenizer(model_path)
        hf_config = load_model_config(model_path)
        positions = hf_config.max_position_embeddings - (
            2 if "roberta" in hf_config.model_type else 0
        )  # RoBERTa offsets by pad+1
        max_length = min(plan.max_length, positions, tokenizer.model_max_length)
        train, evals, source = load_rows(plan, args.data, args.model)
        from agnews_lora.tiny import write_csv

        write_csv(workdir / "train.csv", list(zip(train.texts, train.labels.tolist())))
        write_csv(workdir / "eval.csv", list(zip(evals.texts, evals.labels.tolist())))
        cache = check_token_cache(train, model_path, max_length, workdir / "token-cache")
        lengths = cache.pop("lengths")
        say(
            f"data: {source}: {len(train):,} train / {len(evals):,} inference rows; tokens mean {lengths.mean():.1f}; "
            f"token cache hit on second encode: {cache['cache_hit']}"
        )

        spec = {
            "model": args.model,
            "model_path": model_path,
            "max_length": max_length,
            "workdir": str(workdir),
            "plan": plan.__dict__,
            "cache_dir": str(workdir / "token-cache"),
        }
        if args.pad_sweep:
            spec["pad_sweep"] = {
                "multiples": [int(m) for m in args.pad_sweep.split(",")],
                "rounds": args.sweep_rounds,
                "steps": args.sweep_steps,
            }
        spec_path = workdir / "spec.json"
        spec_path.write_text(json.dumps(spec, default=list))
        if args.pad_sweep:
            say(f"pad sweep {args.pad_sweep} ... (load {C.loadavg()})")
            sweep = run_worker("pad_sweep", spec_path, workdir, 0)
            styles = []
        runs: dict[str, list[dict]] = {s: [] for s in styles}
        for rep in range(plan.repeats):
            for style in styles:
                say(f"[{rep + 1}/{plan.repeats}] {style} ... (load {C.loadavg()})")
                r = run_worker(style, spec_path, workdir, rep)
                say(
                    f"    train {r['train_samples_per_s']:.2f} samples/s, infer "
                    f"{r['infer_samples_per_s']:.1f} samples/s, "
                    f"MFU {r['train_mfu']:.3f}, RSS {r['peak_rss_mb']:.0f} MB ({r['wall_seconds']:.0f} s)"
                )
                runs[style].append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    from agnews_lora.config import LoraSettings

    if args.pad_sweep:
        report = {
            "model": args.model,
            "command": "python benchmarks/throughput.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": C.machine_info(),
            "loadavg_start": load_start,
            "loadavg_end": C.loadavg(),
            "versions": _versions(),
            "data": {
                "source": source,
                "train_rows": len(train),
                "tokens_per_row": C.summarise_lengths(lengths),
            },
            "pad_sweep": sweep,
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        }
        print(sweep_table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        return 0

    results = {s: aggregate(rs) for s, rs in runs.items()}
    ours = results.get("ours", {})
    report = {
        "model": args.model,
        "model_description": model_desc,
        "quick": args.quick,
        "command": "python benchmarks/throughput.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": C.machine_info(),
        "loadavg_start": load_start,
        "loadavg_end": C.loadavg(),
        "versions": _versions(),
        "data": {
            "source": source,
            "train_rows": len(train),
            "inference_rows": len(evals),
            "tokens_per_row": C.summarise_lengths(lengths),
            "padding": padding_stats(lengths, plan.batch_size, max_length),
            "token_cache": cache,
        },
        "settings": {
            "batch_size": plan.batch_size,
            "max_length": max_length,
            "lora": LoraSettings().__dict__,
            "baseline_eval_batch": plan.baseline_eval_batch,
            "repeats": plan.repeats,
            "seed_notebook_micro_batch": plan.seed_micro_batch,
            "train_steps": {s: {"warmup": w, "timed": n} for s, (w, n) in plan.train.items()},
            "inference": {s: {"rows": n, "passes": k} for s, (n, k) in plan.infer.items()},
            "flop_model": C.FlopModel.from_model(hf_config, LoraSettings()).to_dict(),
        },
        **results,
        "ratios": ratios(results),
        "mfu": ours.get("train_mfu"),
        "peak_flops": ours.get(
            "peak_flops"
        ),  # FLOP/s that `mfu` divides by: measured, ours' dtype, in ours' process
        "peak_flops_by_dtype": {r["precision"]: r["peak_flops"] for r in results.values()},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    report["targets"] = targets(report)
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
