"""The HTTP side of ``serve_load.py``: a server in a subprocess (ours or the pipeline baseline), a
small asyncio keep-alive client, one concurrency level of closed-loop load, and its summary."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """A server (`agnews-lora serve`, or the pipeline baseline) in a subprocess on port 0;
    always stopped in `stop()`."""

    def __init__(
        self, run_dir: str, extra: list[str], timeout: float = 300.0, baseline: bool = False
    ):
        head = (
            [str(ROOT / "benchmarks" / "pipeline_server.py")]
            if baseline
            else ["-m", "agnews_lora", "serve"]
        )
        self.cmd = [sys.executable, *head, run_dir, "--port", "0", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.err = tempfile.TemporaryFile(
            "w+"
        )  # not a pipe: a chatty server must never block on it
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env
        )
        deadline = time.monotonic() + timeout
        self.banner = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                self.banner = self.proc.stdout.readline().strip()
                m = re.search(r"http://127\.0\.0\.1:(\d+)", self.banner)
                if m:
                    self.port = int(m.group(1))
                    break
        while (
            time.monotonic() < deadline and self.proc.poll() is None and getattr(self, "port", None)
        ):
            try:
                if asyncio.run(get_json(self.port, "/health")).get("status") == "ok":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        self.err.seek(0)
        raise SystemExit(f"server did not start: {self.err.read()[-2000:]}")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


async def _request(reader, writer, port: int, path: str, body: bytes | None) -> tuple[int, bytes]:
    method = "POST" if body is not None else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + (body or b""))
    await writer.drain()
    header = await reader.readuntil(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", header).group(1))
    return status, await reader.readexactly(length)


async def get_json(port: int, path: str) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        status, body = await asyncio.wait_for(_request(reader, writer, port, path, None), 30)
    finally:
        writer.close()
    return json.loads(body)


async def load_level(
    port: int, texts: list[str], concurrency: int, n_requests: int, timeout: float
) -> dict:
    """`concurrency` keep-alive clients send `n_requests` single-text requests in total, closed loop."""
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n_requests))

    async def client():
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                try:
                    status, body = await asyncio.wait_for(
                        _request(reader, writer, port, "/v1/classify", bodies[i % len(bodies)]),
                        timeout,
                    )
                    ok = status == 200 and len(json.loads(body)["results"]) == 1
                except (
                    OSError,
                    asyncio.TimeoutError,
                    asyncio.IncompleteReadError,
                    ValueError,
                    AttributeError,
                ):
                    ok = False
                    writer.close()  # the connection is in an unknown state: start a new one
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        finally:
            writer.close()

    before = (await get_json(port, "/v1/info"))["stats"]
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    after = (await get_json(port, "/v1/info"))["stats"]
    return {
        "latencies": latencies,
        "errors": errors,
        "seconds": wall,
        "texts": after["texts"] - before["texts"],
        "batches": after["batches"] - before["batches"],
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }


def summarize(concurrency: int, runs: list[dict]) -> dict:
    """Pool the repeats of one (mode, concurrency): total requests / total time, percentiles of all latencies."""
    lat = sorted(x for r in runs for x in r["latencies"])
    wall = sum(r["seconds"] for r in runs)

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(round(q / 100 * (len(lat) - 1))))], 1)

    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "seconds": round(wall, 3),
        "requests_per_s": round(len(lat) / wall, 1),
        "texts_per_s": round(len(lat) / wall, 1),  # one text per request
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": pct(100),
        "mean_texts_per_batch": round(
            sum(r["texts"] for r in runs) / max(1, sum(r["batches"] for r in runs)), 2
        ),
        "texts_per_s_each_repeat": [round(len(r["latencies"]) / r["seconds"], 1) for r in runs],
        "loadavg_1m_after_each_repeat": [r["loadavg_1m_after"] for r in runs],
    }
