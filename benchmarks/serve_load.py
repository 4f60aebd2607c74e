"""Bounded HTTP load against `agnews-lora serve`, side by side with a plain pipeline server.

For each server mode the script starts a server on a free loopback port, waits for /health, and
then, for each concurrency level C, lets C clients (keep-alive connections, one text per request)
send a fixed number of requests in a closed loop.  Modes: `batched` (`agnews-lora serve RUN_DIR`,
ours), `pipeline` (the baseline: `benchmarks/pipeline_server.py`, a transformers pipeline behind a
plain FastAPI `def` route, what a user would write in ten minutes; same model, same request shape)
and `unbatched` (ours with `--no-batching`).  It reports requests/s, texts/s, p50/p95/p99 latency
and the mean texts per forward pass, the ratios ours / pipeline, then stops each server with
SIGTERM.  Nothing leaves the machine; the run stops by itself.

    python benchmarks/serve_load.py runs/minilm --repeat 2 --json bench-results/serve_load.json

Client and server share the CPU; the client is plain asyncio sockets to keep its own cost small.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_client import Server, get_json, load_level, summarize  # noqa: E402

AGNEWS = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"


def load_texts(path: str | None, n: int, seed: int) -> tuple[list[str], str]:
    path = Path(path) if path else (AGNEWS if AGNEWS.is_file() else None)
    if path is None:
        sys.path.insert(0, str(ROOT / "src"))
        from agnews_lora.tiny import synthetic_rows

        return [t for t, _ in synthetic_rows(n, seed=seed)], "synthetic rows (agnews_lora.tiny)"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [
            r["text"]
            for _, r in zip(range(20 * n), csv.DictReader(fh))
            if r.get("text", "").strip()
        ]
    random.Random(seed).shuffle(rows)
    return rows[:n], str(path)


def compute_profile(
    run_dir: str, texts: list[str], batch: int, threads: int | None, workers: int | None
) -> dict:
    """CPU time per text of the serving batch function alone (no HTTP, one worker), one text vs. `batch` per call."""
    import torch
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(ROOT / "src"))
    from agnews_lora.prediction import Predictor
    from agnews_lora.serve.model import default_threads, default_workers, make_batch_fn

    predictor = Predictor.from_run(run_dir, batch_size=batch)
    workers = workers or default_workers(predictor.device.type)
    torch.set_num_threads(
        threads or default_threads(torch.get_num_threads(), workers)
    )  # as `serve` does
    fn = make_batch_fn(predictor)
    fn(texts[:batch]), fn(texts[:1])  # warm-up
    out = {"threads": torch.get_num_threads(), "precision": predictor.precision}
    for size, n in ((1, 64), (batch, 8 * batch)):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, n, size):
            fn(texts[i : i + size])
        out[f"cpu_ms_per_text_{size}"] = round(1000 * (time.process_time() - c0) / n, 2)
        out[f"wall_ms_per_text_{size}"] = round(1000 * (time.perf_counter() - w0) / n, 2)
    out["cpu_ratio"] = round(out["cpu_ms_per_text_1"] / out[f"cpu_ms_per_text_{batch}"], 2)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="a finished run (e.g. a MiniLM run trained on AG News)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--requests", type=int, default=640, help="requests per concurrency level")
    ap.add_argument("--warmup-requests", type=int, default=64)
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=["batched", "pipeline", "unbatched"],
        default=["batched", "pipeline"],
        help="batched: ours; pipeline: the plain pipeline server (the baseline); "
        "unbatched: ours with --no-batching",
    )
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--server-args", default="", help="extra `serve` options, e.g. '--threads 2'")
    ap.add_argument(
        "--baseline-args",
        default="",
        help="extra pipeline_server.py options, e.g. '--dtype bfloat16'",
    )
    ap.add_argument(
        "--texts",
        help="CSV with a text column (default: ../shared/data/agnews/train.csv if present)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds over all modes (results are pooled)"
    )
    ap.add_argument(
        "--compute-profile",
        action="store_true",
        help="also time the batch function alone (no HTTP): CPU ms per text, 1 vs. a full batch",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if min(args.concurrency) < 1 or args.requests < max(args.concurrency) or args.repeat < 1:
        ap.error(
            "--requests must be at least the largest --concurrency; concurrency and --repeat >= 1"
        )

    texts, source = load_texts(args.texts, 2000, seed=0)
    load_before = os.getloadavg()
    raw: dict[str, dict[int, list[dict]]] = {
        m: {c: [] for c in args.concurrency} for m in args.modes
    }
    servers: dict[str, dict] = {}
    for rep in range(args.repeat):  # modes alternate, so that a change in machine load hits both
        for mode in args.modes:
            extra = [
                "--max-batch-size",
                str(args.max_batch_size),
                "--max-texts",
                "1",
                "--max-queue-texts",
                str(max(4096, 2 * max(args.concurrency))),
            ] + args.server_args.split()
            extra += (
                ["--no-batching"]
                if mode == "unbatched"
                else ["--max-wait-ms", str(args.max_wait_ms)]
            )
            if mode == "pipeline":
                extra = args.baseline_args.split()
            server = Server(args.run_dir, extra, baseline=mode == "pipeline")
            try:
                print(
                    f"[{mode} {rep + 1}/{args.repeat}] {server.banner}", file=sys.stderr, flush=True
                )
                info = asyncio.run(get_json(server.port, "/v1/info"))
                servers[mode] = {
                    "command": " ".join(["python", *server.cmd[1:]]),
                    "banner": server.banner,
                    "precision": info.get("precision"),
                    "base_model": info.get("base_model"),
                    "serving": info.get("serving"),
                }
                asyncio.run(
                    load_level(
                        server.port,
                        texts,
                        min(8, max(args.concurrency)),
                        args.warmup_requests,
                        args.timeout,
                    )
                )
                for c in args.concurrency:
                    r = asyncio.run(load_level(server.port, texts, c, args.requests, args.timeout))
                    raw[mode][c].append(r)
                    s = summarize(c, [r])
                    print(
                        f"[{mode} {rep + 1}/{args.repeat}] c={c:<3} {s['texts_per_s']:8.1f} texts/s  p50 "
                        f"{s['p50_ms']:7.1f}  p95 {s['p95_ms']:7.1f}  p99 {s['p99_ms']:7.1f} ms  "
                        f"({s['mean_texts_per_batch']} texts/batch, load {r['loadavg_1m_after']})",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                servers.setdefault(mode, {})["exit_code"] = server.stop()
    results = {m: [summarize(c, raw[m][c]) for c in args.concurrency] for m in args.modes}

    print(
        f"\n{'mode':<10} {'conc':>4} {'req/s':>8} {'texts/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'texts/batch':>11} {'errors':>6}"
    )
    for mode, rows in results.items():
        for r in rows:
            print(
                f"{mode:<10} {r['concurrency']:>4} {r['requests_per_s']:>8.1f} {r['texts_per_s']:>8.1f} "
                f"{r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['mean_texts_per_batch']:>11} "
                f"{r['errors']:>6}"
            )
    speedup = {}
    if "batched" in results and "unbatched" in results:
        for b, u in zip(results["batched"], results["unbatched"]):
            speedup[b["concurrency"]] = round(b["texts_per_s"] / u["texts_per_s"], 2)
        print(
            "\nspeedup of micro-batching (texts/s):",
            "  ".join(f"c={c}: {s:.2f}x" for c, s in speedup.items()),
        )
    vs_baseline = {}
    if "batched" in results and "pipeline" in results:
        print("\nours / pipeline server:")
        for o, b in zip(results["batched"], results["pipeline"]):
            vs_baseline[o["concurrency"]] = r = {
                "texts_per_s": round(o["texts_per_s"] / b["texts_per_s"], 2),
                **{k: round(o[k] / b[k], 2) for k in ("p50_ms", "p95_ms", "p99_ms")},
            }
            print(
                f"  c={o['concurrency']:<3} texts/s {r['texts_per_s']:.2f}x  "
                f"p50 {r['p50_ms']:.2f}x  "
                f"p95 {r['p95_ms']:.2f}x  p99 {r['p99_ms']:.2f}x"
            )
    profile = None
    if args.compute_profile:
        given = dict(zip(args.server_args.split(), args.server_args.split()[1:]))
        profile = compute_profile(
            args.run_dir,
            texts,
            args.max_batch_size,
            int(given.get("--threads", 0)) or None,
            int(given.get("--workers", 0)) or None,
        )
        print(
            f"\nbatch function alone ({profile['precision']}, {profile['threads']} threads): "
            f"{profile['cpu_ms_per_text_1']} CPU ms/text one at a time, "
            f"{profile[f'cpu_ms_per_text_{args.max_batch_size}']} in batches of {args.max_batch_size} "
            f"(ratio {profile['cpu_ratio']}x)"
        )
    load_after = os.getloadavg()
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f} on {os.cpu_count()} CPUs"
    )
    if args.json:
        import torch

        out = {
            "results": results,
            "speedup_texts_per_s": speedup,
            "ours_vs_pipeline": vs_baseline,
            "servers": servers,
            "compute_profile": profile,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "texts_source": source,
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": _cpu_name(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in load_after],
            },
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    failed = sum(r["errors"] for rows in results.values() for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
