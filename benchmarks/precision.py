#!/usr/bin/env python
"""bf16 or fp32 on this CPU: what precision 'auto' picks, against training measured at both.

    python benchmarks/precision.py --model roberta-base-shape --json bench-results/precision.json
    python benchmarks/precision.py --model tiny --rounds 1 --steps 1     # a smoke run (the test's)

In one process, on the same batches: the peak dense matmul FLOP/s in fp32 and in bf16 (large square
products, as throughput.py measures them), the probe that `auto` decides by
(``agnews_lora.devices.bf16_speedup``: a 768 x 768 product, ~0.1 s), and our real training step
(``Loop.train_step``, as profile_step.py runs it: length-grouped batch, LoRA, AdamW; under bf16 the
frozen Linear weights stored in bf16) and our inference (``TorchBackend``: the model stored in bf16
under bf16, batches of 128 real rows) at each precision, in alternating rounds so that a drifting
machine slows both alike. Prints a table against fp32, the baseline, and says whether `auto` chose the
faster one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU question: setup() would train on a GPU it sees

PRECISIONS = ("fp32", "bf16")
INFER_BATCH = 128  # train.eval_batch_size's default


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=("tiny", "minilm", "roberta-base-shape"), default="roberta-base-shape"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (fp32, bf16, ...)")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per round")
    p.add_argument("--first-step", type=int, default=100, help="first step of the epoch to run")
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args(argv)

    import _common as C
    import _throughput_setup as T
    import numpy as np

    from agnews_lora import devices
    from agnews_lora.backends import TorchBackend, prepare_for_inference
    from agnews_lora.config import load_config
    from agnews_lora.modeling import load_base_model, load_model_config
    from agnews_lora.training import position_limit, setup

    T.quiet()
    machine, load_before = C.machine_info(), C.loadavg()
    speedup = devices.bf16_speedup()  # first, on idle cores, as `train` would measure it
    auto = devices.resolve_precision("auto", "cpu")
    peak = {
        name: C.measure_peak_flops(name, (512, 1024) if args.model == "tiny" else (1024, 2048))[
            "flops"
        ]
        for name in PRECISIONS
    }

    work = Path(tempfile.mkdtemp(prefix="agnews-precision-"))
    model_path, desc = T.prepare_model(args.model, work)
    max_length = min(512, position_limit(load_model_config(model_path)) or 512)
    rows, infer_rows, source = T.load_rows(
        T.Plan(max_rows=4000 if args.model == "tiny" else None, eval_rows=INFER_BATCH),
        None,
        args.model,
    )
    loops = {}
    for name in PRECISIONS:
        cfg = load_config(
            None,
            [
                f"model.name_or_path={model_path}",
                f"model.max_length={max_length}",
                f"output_dir={work}",
                f"run_name=run-{name}",
                f"data.cache_dir={work / 'cache'}",
                f"train.precision={name}",
            ],
        )
        loops[name] = setup(cfg, progress=False, splits={"train": rows, "validation": rows})

    def run(loop) -> tuple[float, list[int]]:
        widths = []
        t0 = time.perf_counter()
        for k in range(args.steps):
            loop.step = args.first_step + k
            idx = np.concatenate(loop.micro_batches(loop.step))
            widths.append(int(loop.train_enc.lengths[idx].max()))
            loop.train_step()
        return (time.perf_counter() - t0) / args.steps, widths

    for loop in loops.values():
        run(loop)  # warm-up: the same steps, so every shape has been seen once
    per_step = {name: [] for name in PRECISIONS}
    for _ in range(args.rounds):
        for name, loop in loops.items():
            seconds, widths = run(loop)
            per_step[name].append(seconds)
    batch = loops["fp32"].cfg.train.per_device_batch_size

    # inference: a fresh copy of the encoder per precision, as `predict` and `serve` hold it
    enc = loops["fp32"].tokenizer(
        list(infer_rows.texts), truncation=True, max_length=128, padding=True, return_tensors="np"
    )
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    backends = {}
    for name, loop in loops.items():
        backend = TorchBackend(load_base_model(loop.cfg), name, "cpu")
        prepare_for_inference(backend.model, backend.precision)
        backend.logits(ids, mask)  # warm-up
        backends[name] = backend
    per_batch = {name: [] for name in PRECISIONS}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            t0 = time.perf_counter()
            backend.logits(ids, mask)
            per_batch[name].append(time.perf_counter() - t0)

    results = {}
    for name in PRECISIONS:
        s = C.median(per_step[name])
        results[name] = {
            "peak_matmul_tflops": peak[name] / 1e12,
            "train_ms_per_step": s * 1e3,
            "train_ms_per_step_rounds": [x * 1e3 for x in per_step[name]],
            "train_samples_per_s": batch / s,
            "infer_samples_per_s": len(ids) / C.median(per_batch[name]),
        }
    faster = min(PRECISIONS, key=lambda n: results[n]["train_ms_per_step"])
    report = {
        "model": desc,
        "rows": source,
        "batch_size": batch,
        "longest_rows": widths,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "machine": machine,
        "loadavg_before": load_before,
        "loadavg_after": C.loadavg(),
        "probe_bf16_speedup": speedup,
        "probe_threshold": devices.BF16_MIN_SPEEDUP,
        "auto": auto,
        "faster_in_training": faster,
        "auto_chose_the_faster": auto == faster,
        "train_bf16_vs_fp32": results["fp32"]["train_ms_per_step"]
        / results["bf16"]["train_ms_per_step"],
        "infer_bf16_vs_fp32": results["bf16"]["infer_samples_per_s"]
        / results["fp32"]["infer_samples_per_s"],
        "infer_batch": [len(ids), int(ids.shape[1])],
        "results": results,
    }

    print(f"{desc}; rows: {source}; {machine['cpu']}, flags {machine['cpu_bf16'] or 'no bf16'}")
    print(f"batch {batch}, longest rows {widths}; {args.rounds} alternating rounds of {args.steps}")
    print(
        f"{'precision':<10} {'peak matmul TFLOP/s':>20} {'train ms/step':>14} "
        f"{'train samples/s':>16} {'inference samples/s':>20}"
    )
    for name in PRECISIONS:
        r = results[name]
        print(
            f"{name:<10} {r['peak_matmul_tflops']:>20.3f} {r['train_ms_per_step']:>14.0f} "
            f"{r['train_samples_per_s']:>16.2f} {r['infer_samples_per_s']:>20.1f}"
        )
    probe = "no bf16 instructions" if speedup is None else f"bf16 {speedup:.2f}x fp32"
    print(
        f"bf16/fp32 speed: training {report['train_bf16_vs_fp32']:.2f}x, inference "
        f"{report['infer_bf16_vs_fp32']:.2f}x; probe: {probe} "
        f"(bf16 from {devices.BF16_MIN_SPEEDUP}x) -> auto = {auto}; "
        f"{'the faster one' if auto == faster else 'NOT the faster one'}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
