"""Helpers shared by several test modules (import them as ``from helpers import ...``).

Keep each helper in its own clearly separated section.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# command lines


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (for `agnews-lora train` argv)."""
    return [arg for item in overrides for arg in ("--set", item)]


# ---------------------------------------------------------------------------------------------
# serving: a real `agnews-lora serve` process, with test-only faults injected from outside src/

_SLEEP = re.compile(r"__sleep:(\d{1,5})__")


def faulty_batch_fn(batch_fn):
    """``batch_fn`` that first obeys fault texts: "__raise__" makes the batch raise, and
    "__sleep:<ms>__" makes it sleep that long (to hold a worker deterministically)."""

    def fn(texts):
        for t in texts:
            if t == "__raise__":
                raise RuntimeError("injected test fault")
            m = _SLEEP.fullmatch(t)
            if m:
                time.sleep(int(m.group(1)) / 1000)
        return batch_fn(texts)

    return fn


def serve_with_faults(argv: list[str]) -> int:
    """`agnews-lora serve` whose batch function is wrapped by `faulty_batch_fn` (a monkeypatch of
    the name `serve.server` calls; production code has no hooks)."""
    from agnews_lora import cli
    from agnews_lora.serve import server

    make = server.make_batch_fn
    server.make_batch_fn = lambda predictor: faulty_batch_fn(make(predictor))
    return cli.main(["serve", *argv])


class ServerProcess:
    """`agnews-lora serve RUN_DIR` (with `faulty_batch_fn`) on a free loopback port in a subprocess;
    `ready()` waits for /health; always `stop()` it."""

    def __init__(self, run_dir, tmp_path: Path, *extra: str):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.err_path = Path(tmp_path) / f"server-{time.monotonic_ns()}.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    str(run_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--threads",
                    "1",
                    "--precision",
                    "fp32",
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
            )
        self.url: str | None = None
        self.port: int | None = None

    def ready(self, timeout: float = 120.0) -> ServerProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while self.url is None and time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                m = re.search(r"http://127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
                if m:
                    self.port = int(m.group(1))
                    self.url = f"http://127.0.0.1:{self.port}"
        if not self.url:
            raise AssertionError(
                f"server did not start (rc={self.proc.poll()}): {self.err_path.read_text()[-2000:]}"
            )
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"/health never became ready: {self.err_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc.stdout.close()


if __name__ == "__main__":  # how ServerProcess starts the server
    sys.exit(serve_with_faults(sys.argv[1:]))
