"""The throughput benchmark's report: medians over repeats, ratios against the baselines, the issue's
targets and the printed tables."""

from __future__ import annotations

import sys

import _common as C
import numpy as np

STYLES = ("seed_notebook", "trainer", "ours")


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


def ratios(results: dict) -> dict:
    """Ours against each baseline (None where a style did not run)."""
    ours = results.get("ours", {})
    return {
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
