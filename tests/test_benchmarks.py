"""The benchmarks run end to end on the tiny model (throughput, profile, precision, serving load)
and write their documented JSON."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("seed_notebook", "trainer", "ours")


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/SCRIPT ARGS`` offline, yielding the cores to others; it must exit 0."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_WAIT_POLICY="PASSIVE"
    )  # the machine running the tests may be shared
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_throughput_quick_tiny_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_benchmark("throughput.py", "--model", "tiny", "--quick", "--json", str(out))
    assert "ours/seed_notebook" in proc.stdout  # the printed table
    report = json.loads(out.read_text())

    for style in STYLES:
        r = report[style]
        for key in (
            "train_samples_per_s",
            "train_tokens_per_s",
            "infer_samples_per_s",
            "peak_rss_mb",
        ):
            assert isinstance(r[key], (int, float)) and r[key] > 0, (style, key, r[key])
        assert r["train_tokens_per_s"] > r["train_samples_per_s"]
    assert (
        report["seed_notebook"]["precision"] == "fp32" and report["trainer"]["precision"] == "fp32"
    )
    assert report["ours"]["precision"] in ("bf16", "fp32")
    # the machine record says what 'auto' picks on this CPU and why; ours (precision 'auto') used exactly that
    machine = report["machine"]
    assert machine["auto_cpu_precision"] == report["ours"]["precision"]
    assert machine["auto_cpu_precision_reason"].startswith("auto: ")
    assert report["ours"]["inference_model"].startswith("merged")

    for key in ("train_vs_seed_notebook", "train_vs_trainer", "infer_vs_seed_notebook"):
        assert report["ratios"][key] > 0
    assert 0 < report["mfu"] < 1
    assert (
        report["peak_flops"] > 0
        and report["peak_flops"] == report["peak_flops_by_dtype"][report["ours"]["precision"]]
    )
    assert report["data"]["token_cache"]["cache_hit"] is True
    # seed-notebook style pads every row to max_length: far more padded than real tokens
    seed = report["seed_notebook"]
    assert seed["train_mean_width"] == report["settings"]["max_length"]
    assert seed["train_padded_tokens_per_s"] > 1.5 * seed["train_tokens_per_s"]
    max_length = report["settings"]["max_length"]
    assert all(
        w % 16 == 0 or w == max_length for w in report["ours"]["train_widths_seen"]
    )  # pad to a multiple of 16
    assert len(report["loadavg_start"]) == 3


def test_profile_step_tiny_prints_where_the_time_goes():
    proc = run_benchmark("profile_step.py", "--model", "tiny", "--steps", "2", "--first-step", "3")
    out = proc.stdout
    assert "dropout fast-cpu" in out and "ms/step (profiled)" in out and "matrix products" in out
    assert "aten::" in out  # the operator table


def test_precision_benchmark_times_both_precisions_and_reports_autos_choice(tmp_path):
    out = tmp_path / "precision.json"
    proc = run_benchmark(
        "precision.py", "--model", "tiny", "--rounds", "1", "--steps", "1", "--json", str(out)
    )
    assert "train ms/step" in proc.stdout and "-> auto = " in proc.stdout  # the printed table
    report = json.loads(out.read_text())
    for name in ("fp32", "bf16"):
        r = report["results"][name]
        assert r["peak_matmul_tflops"] > 0 and r["train_samples_per_s"] > 0
        assert r["infer_samples_per_s"] > 0
        assert len(r["train_ms_per_step_rounds"]) == 1
    assert report["auto"] in ("fp32", "bf16")
    assert report["faster_in_training"] in ("fp32", "bf16")
    assert report["auto_chose_the_faster"] == (report["auto"] == report["faster_in_training"])
    # the probe runs only where the CPU offers bf16 at all, and 'auto' follows it
    if report["probe_bf16_speedup"] is None:
        assert report["auto"] == "fp32"
    else:
        fast = report["probe_bf16_speedup"] >= report["probe_threshold"]
        assert report["auto"] == ("bf16" if fast else "fp32")


def test_serve_load_compares_ours_with_the_pipeline_server(trained_run, data_dir, tmp_path):
    """serve_load.py starts ours and the plain pipeline server on the same run, loads both at each
    concurrency and writes the side-by-side JSON (texts/s, percentiles, ratios), then stops both."""
    out = tmp_path / "serve.json"
    proc = run_benchmark(
        "serve_load.py",
        str(trained_run),
        "--concurrency", "1", "4",
        "--requests", "8",
        "--warmup-requests", "2",
        "--texts", str(data_dir / "test.csv"),
        "--json", str(out),
    )  # fmt: skip
    assert "ours / pipeline server:" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"batched", "pipeline"}
    for mode, rows in report["results"].items():
        assert [r["concurrency"] for r in rows] == [1, 4], mode
        for r in rows:
            assert r["requests"] == 8 and r["errors"] == 0, (mode, r)
            assert r["texts_per_s"] > 0
            assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"], (mode, r)
        # stopped by SIGTERM, not killed: ours re-raises it after draining (docs/serving.md), exit -15
        assert report["servers"][mode]["exit_code"] in (0, -signal.SIGTERM), mode
    assert report["servers"]["batched"]["serving"] and report["servers"]["pipeline"]["command"]
    ratios = report["ours_vs_pipeline"]
    assert set(ratios) == {"1", "4"}
    assert all(r["texts_per_s"] > 0 and r["p99_ms"] > 0 for r in ratios.values())
    assert str(data_dir / "test.csv") == report["texts_source"]
