"""The model side of `agnews-lora serve`: what the worker threads run, and how many of them.

`make_batch_fn` turns a `Predictor` into ``fn(texts) -> [result per text]`` for the
:class:`agnews_lora.batcher.MicroBatcher`: texts sorted by length and cut into a few padded
forward passes.  It is safe to call from several worker threads at once (``serve --workers``).
"""

import os
import re
import threading
import time

# Test-only fault injection (tests/test_serving.py): with AGNEWS_LORA_SERVE_TEST_HOOKS=1 a batch that
# contains the text "__raise__" raises, and one that contains "__sleep:<ms>__" sleeps that long first.
TEST_HOOKS_ENV = "AGNEWS_LORA_SERVE_TEST_HOOKS"
_SLEEP_HOOK = re.compile(r"__sleep:(\d{1,5})__")


def default_workers(device_type: str, cpus: int | None = None) -> int:
    """Micro-batches that run at once: 2 on a CPU with 2+ cores, else 1.

    On the 2-core CPU of docs/performance.md two single-threaded workers served 1.35x the texts/s of
    one with 32 clients: one worker keeps one core busy, and the event loop leaves most of the other
    idle; one batch on two intra-op threads was slower than on one.  GPUs: one (more not measured).
    """
    cpus = cpus or os.cpu_count() or 1
    return 2 if device_type == "cpu" and cpus >= 2 else 1


def default_threads(torch_threads: int, workers: int) -> int:
    """torch intra-op threads per worker: one core is left to the event loop (HTTP parsing, JSON),
    whose preemption would otherwise stall every parallel op; the rest are shared out among the workers."""
    return max(1, (torch_threads - 1) // workers)


def make_batch_fn(predictor, overhead_tokens: int | None = None):
    """``fn(texts) -> [result per text]``: texts sorted by length, cut into few padded forward passes."""
    import numpy as np
    import torch

    from .batcher import plan_forwards
    from .batching import collate
    from .prediction import encode_texts, softmax

    p, names = predictor, predictor.label_names
    hooks = os.environ.get(TEST_HOOKS_ENV) == "1"
    if overhead_tokens is None:  # a forward pass costs about as much as this many extra (padding) tokens
        overhead_tokens = 64 if p.device.type == "cpu" else 2048

    tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to call from two worker threads at once

    def classify_batch(texts: list[str]) -> list[dict]:
        if hooks:
            _run_test_hooks(texts)
        with tokenizer_lock:
            encoded, truncated = encode_texts(p.tokenizer, texts, p.max_length)
        order = np.argsort(-encoded.lengths, kind="stable")
        logits = np.zeros((len(texts), len(names)), dtype=np.float32)
        with torch.inference_mode():
            for a, b in plan_forwards(encoded.lengths[order], p.batch_size, overhead_tokens):
                rows = order[a:b]
                batch = collate([encoded.ids[i] for i in rows], p.pad_id, 16, p.max_length)
                with p.precision_context():
                    out = p.model(**{k: v.to(p.device) for k, v in batch.items()}).logits
                logits[rows] = out.float().cpu().numpy()
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model produced non-finite logits")
        out = []
        for probs, cut in zip(softmax(logits), truncated):
            k = int(probs.argmax())
            out.append({"label": k, "label_name": names[k],
                        "probabilities": {n: float(v) for n, v in zip(names, probs)}, "truncated": cut})
        return out

    return classify_batch


def _run_test_hooks(texts: list[str]) -> None:
    for t in texts:
        if t == "__raise__":
            raise RuntimeError("injected test fault")
        m = _SLEEP_HOOK.fullmatch(t)
        if m:
            time.sleep(int(m.group(1)) / 1000)


def warm_up(batch_fn, predictor, max_batch_size: int) -> float:
    """A short and a full-size, full-length batch so that the first real requests are not slow."""
    t0 = time.perf_counter()
    long_text = " ".join(["news"] * (predictor.max_length + 8))
    batch_fn(["warm-up"])
    batch_fn([long_text] * min(max_batch_size, 64))
    return time.perf_counter() - t0
