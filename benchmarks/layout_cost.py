#!/usr/bin/env python
"""Modelled vs measured training cost per step of LoRA layouts (all layers, top half, top quarter).

    python benchmarks/layout_cost.py --model minilm [--steps 8] [--set KEY=VALUE ...]
    python benchmarks/layout_cost.py --model tiny --steps 4          # a quick check (tests)

For each layout (q,v at rank 8 by default: ``--targets``, ``--rank``) the loop is built with
``agnews_lora.training.setup`` as ``train`` builds it and ``Loop.train_step`` (the real step) runs
the same ``--steps`` steps, spread over the first epoch, after warming up on them. It prints the
modelled cost (`agnews_lora.layout_cost.step_cost`, what ``plan`` shows) and the measured seconds
per step, each relative to the all-layers layout. Rows: the shared AG News file for MiniLM,
synthetic rows for the tiny model. On a shared CPU the timings are noisy: compare the ratios.
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
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # a CPU benchmark unless asked otherwise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tiny", "minilm", "roberta-base-shape"), default="minilm")
    p.add_argument(
        "--steps", type=int, default=8, help="timed steps per layout (after as many warm-up)"
    )
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="query,value", help="lora.target_modules")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = p.parse_args(argv)

    import _throughput_setup as T
    from _common import machine_info

    from agnews_lora.config import LoraSettings, load_config
    from agnews_lora.modeling import load_model_config
    from agnews_lora.planning import Planner
    from agnews_lora.training import setup

    T.quiet()
    work = Path(tempfile.mkdtemp(prefix="agnews-layout-cost-"))
    model_path, desc = T.prepare_model(args.model, work)
    planner = Planner(load_model_config(model_path))
    rows, _, source = T.load_rows(T.Plan(max_rows=4000, eval_rows=16), None, args.model)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results = []
    for label, layers in planner.layer_subsets():
        settings = LoraSettings(r=args.rank, target_modules=targets, layers=layers)
        modelled = planner.layout(settings, 10**9).step_cost
        cfg = load_config(
            None,
            [
                f"model.name_or_path={model_path}",
                "model.max_length=128",
                f"output_dir={work}",
                f"run_name=layout-{len(results)}",
                f"data.cache_dir={work / 'cache'}",
                f"lora.r={args.rank}",
                f"lora.target_modules=[{', '.join(targets)}]",
                f"lora.layers={layers or 'null'}",
                "budget.max_trainable_params=100000000",
                *args.set,
            ],
        )
        loop = setup(cfg, progress=False, splits={"train": rows, "validation": rows})
        spread = [i * loop.steps_per_epoch // args.steps for i in range(args.steps)]

        def run(loop=loop, spread=spread) -> float:
            t0 = time.perf_counter()
            for s in spread:
                loop.step = s
                loop.train_step()
            return (time.perf_counter() - t0) / len(spread)

        run()  # warm-up: every shape seen once
        seconds = min(run(), run())
        results.append((label, modelled, seconds))
        print(f"  {label}: {seconds * 1e3:.0f} ms/step", file=sys.stderr, flush=True)

    info = machine_info()
    print(
        f"{desc}; rows: {source}; {args.targets} r={args.rank}, batch "
        f"{cfg.train.per_device_batch_size}, precision {loop.precision}"
    )
    print(
        f"cpu: {info['cpu']} ({info['logical_cpus']} logical, torch threads "
        f"{info['torch_threads']}); load average {os.getloadavg()[0]:.1f}"
    )
    base_model, base_time = results[0][1], results[0][2]
    print(
        f"{'layers':<22} {'modelled':>9} {'ms/step':>9} {'modelled vs all':>16} "
        f"{'measured vs all':>16}"
    )
    for label, modelled, seconds in results:
        print(
            f"{label:<22} {modelled:>9.2f} {seconds * 1e3:>9.0f} {modelled / base_model:>16.2f} "
            f"{seconds / base_time:>16.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
