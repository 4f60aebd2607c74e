"""The model side of `agnews-lora serve`: what the worker threads run, and how many of them.

`make_batch_fn` turns a `Predictor` into ``fn(texts) -> [result per text]`` for the
:class:`agnews_lora.serve.batcher.MicroBatcher`: the same path as `predict` and `evaluate`
(`Predictor.classify`: texts sorted by length, cut into a few padded forward passes).  It is safe
to call from several worker threads at once (``serve --workers``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def default_workers(device_type: str, cpus: int | None = None) -> int:
    """Micro-batches that run at once under load: 2 on a CPU with 2+ cores, else 1 (a batch
    that runs alone gets all the threads: `serve.threads`).

    On the 2-core CPU of docs/performance.md two single-threaded workers served 1.35x the texts/s
    of one with 32 clients: one worker keeps one core busy, and the event loop leaves most of the
    other idle; one batch on two intra-op threads was slower than on one.  GPUs: one (more not
    measured).
    """
    cpus = cpus or os.cpu_count() or 1
    return 2 if device_type == "cpu" and cpus >= 2 else 1


def default_threads(torch_threads: int, workers: int) -> int:
    """torch intra-op threads per worker under load: one core is left to the event loop (HTTP
    parsing, JSON), whose preemption would otherwise stall every parallel op; the rest are shared
    out among the workers."""
    return max(1, (torch_threads - 1) // workers)


def make_batch_fn(predictor) -> Callable[[list[str]], list[dict]]:
    """``fn(texts) -> [result per text]``: `Predictor.classify`, the one inference path."""

    def classify_batch(texts: list[str]) -> list[dict]:
        return predictor.classify(texts)

    return classify_batch


def warm_up(batch_fn, predictor, max_batch_size: int) -> float:
    """A short and a full-size, full-length batch so that the first real requests are not slow."""
    t0 = time.perf_counter()
    long_text = " ".join(["news"] * (predictor.max_length + 8))
    batch_fn(["warm-up"])
    batch_fn([long_text] * min(max_batch_size, 64))
    return time.perf_counter() - t0
