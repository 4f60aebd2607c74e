"""What ``_throughput_worker.py`` measures with: timed steps and passes, their summaries, peak FLOP/s,
memory, and the pad-multiple sweep (our loop once per ``train.pad_to_multiple_of``)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import _common as C
import numpy as np


def pad_sweep(spec: dict, train_table, eval_table, workdir: Path) -> dict:
    """Our loop once per pad multiple, interleaved round by round so that every setting sees the same load."""
    from agnews_lora.config import load_config
    from agnews_lora.training import setup

    sw = spec["pad_sweep"]
    loops = {}
    for m in sw["multiples"]:
        cfg = load_config(
            None,
            [
                f"model.name_or_path={spec['model_path']}",
                f"model.max_length={spec['max_length']}",
                f"train.per_device_batch_size={spec['plan']['batch_size']}",
                "train.max_steps=100000",
                f"train.pad_to_multiple_of={m}",
                f"data.cache_dir={spec['cache_dir']}",
                f"output_dir={workdir}",
                f"run_name=sweep-{m}",
            ],
        )
        loops[m] = setup(
            cfg, progress=False, splits={"train": train_table, "validation": eval_table}
        )
    precision = next(iter(loops.values())).precision
    train_enc = next(iter(loops.values())).train_enc
    per_round = {m: [] for m in loops}
    widths = {m: set() for m in loops}
    for _ in range(sw["rounds"]):
        for m, loop in loops.items():  # same seed: every loop walks the same batches
            t0, tokens = time.perf_counter(), 0
            for _ in range(sw["steps"]):
                idx = np.concatenate(loop.micro_batches(loop.step))
                w = int(train_enc.lengths[idx].max())
                widths[m].add(min(spec["max_length"], -(-w // m) * m))
                tokens += loop.train_step()[1]
            per_round[m].append(tokens / (time.perf_counter() - t0))
    return {
        "multiples": sw["multiples"],
        "rounds": sw["rounds"],
        "steps": sw["steps"],
        "precision": precision,
        "results": {
            str(m): {
                "tokens_per_s_by_round": v,
                "median_tokens_per_s": float(np.median(v[1:] if len(v) > 1 else v)),
                "distinct_widths": len(widths[m]),
            }
            for m, v in per_round.items()
        },
    }


GPU_PEAK_MB_OUTSIDE = [
    0.0
]  # GPU memory peak reached before a peak-FLOP/s measurement (which must not count)


def peak(precision: str, plan, device) -> dict:
    if device.type != "cuda":
        return C.measure_peak_flops(precision, plan.peak_sizes, plan.peak_reps, device.type)
    import torch

    GPU_PEAK_MB_OUTSIDE[0] = max(GPU_PEAK_MB_OUTSIDE[0], torch.cuda.max_memory_allocated() / 2**20)
    out = C.measure_peak_flops(precision, plan.peak_sizes, plan.peak_reps, device.type)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()  # the big test matrices are not the model's memory
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timing_summary(
    times: list[float], rows: list[int], tokens: list[int], widths: list[int]
) -> dict:
    total = sum(times)
    return {
        "train_steps_timed": len(times),
        "train_seconds": total,
        "train_samples_per_s": sum(rows) / total,
        "train_tokens_per_s": sum(tokens) / total,
        "train_padded_tokens_per_s": sum(w * r for w, r in zip(widths, rows)) / total,
        "train_step_seconds_median": float(np.median(times)),
        "train_mean_tokens_per_sample": sum(tokens) / sum(rows),
        "train_mean_width": float(np.mean(widths)),
        "train_widths_seen": sorted(set(int(w) for w in widths)),
    }


def train_measure(step_fn, warm: int, steps: int):
    """Run warm + steps steps; time the last ``steps``.  ``step_fn(i)`` -> (rows, real tokens,
    padded width, lengths)."""
    import torch

    sync = (
        torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    )  # GPU work is asynchronous
    times, rows, tokens, widths, lengths = [], [], [], [], []
    for i in range(warm + steps):
        sync()
        t0 = time.perf_counter()
        n_rows, n_tokens, width, lens = step_fn(i)
        sync()
        dt = time.perf_counter() - t0
        if i >= warm:
            times.append(dt)
            rows.append(n_rows)
            tokens.append(n_tokens)
            widths.append(width)
            lengths.append(lens)
    return times, rows, tokens, widths, lengths


def infer_summary(n_rows: int, pass_times: list[float], batch_size: int) -> dict:
    med = float(np.median(pass_times))
    return {
        "infer_rows": n_rows,
        "infer_passes": len(pass_times),
        "infer_batch_size": batch_size,
        "infer_seconds_median": med,
        "infer_samples_per_s": n_rows / med,
    }


def memory(device) -> dict:
    import torch

    out = {"peak_rss_mb": round(rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(
            max(GPU_PEAK_MB_OUTSIDE[0], torch.cuda.max_memory_allocated() / 2**20), 1
        )
    return out
