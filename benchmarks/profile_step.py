#!/usr/bin/env python
"""Where one training step of ours spends its time: the torch profiler over real steps of the loop.

    python benchmarks/profile_step.py --model roberta-base-shape [--steps 4] [--set train.fast_cpu_dropout=false]
    python benchmarks/profile_step.py --device cuda --model minilm --steps 10   # GPU: how busy the kernels keep it

Builds the loop with ``agnews_lora.training.setup`` (as ``train`` does), runs ``Loop.train_step``
(the real step: length-grouped batch, bf16 autocast where `auto` measures it faster, LoRA, AdamW) on
the shared AG News rows (synthetic rows for the tiny model), warms up on the same steps, then
profiles ``--steps`` steps and prints
the wall time per step, the share of matrix products and the top operators by self CPU time.
Time spent outside torch operators (numpy's dropout masks, Python) shows as the gap between the
wall time and the operators' total.
"""

from __future__ import annotations

import argparse
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

MATMUL_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::matmul",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model", choices=("tiny", "minilm", "roberta-base-shape"), default="roberta-base-shape"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=4,
        help="profiled steps (after the same number of warm-up steps)",
    )
    p.add_argument(
        "--first-step",
        type=int,
        default=100,
        help="first step of the epoch to run (its data and width)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for ours"
    )
    p.add_argument("--rows", type=int, default=25, help="operators to list")
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: also time the GPU kernels"
    )
    args = p.parse_args(argv)
    if args.device == "cpu":  # setup() trains on a GPU whenever it sees one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import _throughput_setup as T
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from agnews_lora.config import load_config
    from agnews_lora.modeling import load_model_config
    from agnews_lora.training import position_limit, setup

    T.quiet()
    work = Path(tempfile.mkdtemp(prefix="agnews-profile-"))
    model_path, desc = T.prepare_model(args.model, work)
    max_length = min(512, position_limit(load_model_config(model_path)) or 512)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_path}",
            f"model.max_length={max_length}",
            f"output_dir={work}",
            "run_name=run",
            f"data.cache_dir={work / 'cache'}",
            *args.set,
        ],
    )
    rows, _, source = T.load_rows(
        T.Plan(max_rows=4000 if args.model == "tiny" else None, eval_rows=16), None, args.model
    )
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: this machine has no GPU")
    loop = setup(cfg, progress=False, splits={"train": rows, "validation": rows})
    enc, precision = loop.train_enc, loop.precision

    def run(n: int) -> tuple[float, list[int]]:
        widths = []
        t0 = time.perf_counter()
        for k in range(n):
            loop.step = args.first_step + k
            idx = np.concatenate(loop.micro_batches(loop.step))
            widths.append(int(enc.lengths[idx].max()))
            loop.train_step()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n, widths

    run(args.steps)  # warm-up: the same steps, so every shape has been seen once
    plain_wall = run(args.steps)[0]  # without the profiler's own overhead
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ) as prof:
        wall, widths = run(args.steps)
    events = prof.key_averages()
    if cuda:  # a launch-bound step keeps the GPU idle between its many small kernels
        # the kernels' own rows only: the CPU operators that launched them carry the same time again
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu = sum(e.self_device_time_total for e in kernels) / 1e3 / args.steps
        print(
            f"cuda: {plain_wall * 1e3:.1f} ms/step unprofiled; GPU kernels busy {gpu:.1f} ms/step "
            f"({gpu / (plain_wall * 1e3):.0%} of it); kernels/step {sum(e.count for e in kernels) / args.steps:.0f}"
        )
    total = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps  # ms per step
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e3 / args.steps
    print(f"{desc}; rows: {source}")
    print(
        f"precision {precision}; dropout {'fast-cpu' if loop.fast_dropout else 'torch'}; "
        f"batch {cfg.train.per_device_batch_size}, longest rows {widths}"
    )
    print(
        f"wall {wall * 1e3:.0f} ms/step (profiled), {plain_wall * 1e3:.1f} ms/step unprofiled; "
        f"torch operators {total:.0f} ms/step, of which matrix products "
        f"{matmul:.0f} ms ({matmul / (wall * 1e3):.0%} of the wall time); outside operators {wall * 1e3 - total:.0f} ms"
    )
    print(f"{'operator':<48} {'ms/step':>8} {'share':>6} {'calls/step':>10}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
        ms = e.self_cpu_time_total / 1e3 / args.steps
        print(f"{e.key[:48]:<48} {ms:8.1f} {ms / (wall * 1e3):6.1%} {e.count / args.steps:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
