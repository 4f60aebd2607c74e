"""How many torch threads each micro-batch of `agnews-lora serve` runs on: threads follow the load.

A batch that starts while no other batch runs and nothing else is queued (one client, or a lull)
runs **alone on all the server's threads**, so that a lone request is answered with every core.
While it runs no other batch starts (it has the cores; the next batch is at most one forward pass
away).  Under load (something else is running or still queued) batches run on up to ``workers``
worker threads with ``per_worker`` threads each (default: one core left to the event loop, the rest
shared out), the split that served the most texts/s at 32-64 clients.

Why this is possible: ``torch.set_num_threads`` sets the OpenMP thread count of the *calling* OS
thread (each Python thread that runs a forward pass has its own OpenMP team), so every worker thread
sets its own count before its first batch.  Checked with torch 2.13 (see docs/serving.md): a thread
that sets 1 and a thread that sets 2 each report and use their own count while running at the same
time; a thread that never set one starts, at its first parallel operator or `get_num_threads`, from
the value last set by any thread.  Every `set_num_threads` call also clears oneDNN's primitive cache
(for all threads), so a batch that runs alone goes to a thread of its own that keeps ``total``
threads, and the workers keep ``per_worker``: no thread changes its count after its first batch.

Explicit ``--threads N`` turns the policy off: every batch runs on N threads.  Backends whose
thread count cannot change per call (ONNX Runtime) and GPUs use a fixed policy too.  OpenVINO
follows the load like torch: it holds one compiled model per (threads, streams) — all threads and
one stream for a batch alone, ``per_worker`` threads and ``workers`` streams under load (a compiled
model with one stream runs one inference at a time, whatever the number of calling threads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from .model import default_threads, default_workers


@dataclass(frozen=True)
class ThreadPolicy:
    """``total``: threads of a batch that runs alone; ``workers``: batches that may run at once
    under load, ``per_worker`` threads each; ``adaptive=False``: always ``per_worker``."""

    total: int
    workers: int
    per_worker: int
    adaptive: bool = True

    def threads_for(self, running: int, queued_after: int) -> int:
        """Threads for a batch about to start while ``running`` batches run and ``queued_after``
        texts stay queued once it is taken."""
        if self.adaptive and running == 0 and queued_after == 0:
            return self.total
        return self.per_worker

    def is_solo(self, threads: int) -> bool:
        """A batch on more than ``per_worker`` threads has the cores to itself: nothing else
        starts while it runs."""
        return self.adaptive and threads > self.per_worker

    def describe(self) -> str:
        w, t = self.workers, self.per_worker
        under_load = f"{w} worker{'s' * (w > 1)} x {t} thread{'s' * (t > 1)}"
        if not self.adaptive:
            return under_load
        return f"threads follow the load: alone {self.total} threads, busy {under_load}"

    def to_dict(self) -> dict:
        return asdict(self)


def make_policy(
    device_type: str,
    cores: int,
    workers: int = 0,
    threads: int | None = None,
    can_set_threads: bool = True,
) -> ThreadPolicy:
    """The serving policy: ``workers`` 0 = automatic; ``threads`` given = fixed (no adapting);
    ``cores``: the threads a lone batch gets (torch's default thread count, i.e. the cores)."""
    cores = max(1, cores)
    workers = workers or default_workers(device_type, cores)
    if threads:
        return ThreadPolicy(threads, workers, threads, adaptive=False)
    per_worker = default_threads(cores, workers)
    adaptive = device_type == "cpu" and can_set_threads and cores > per_worker
    return ThreadPolicy(cores if adaptive else per_worker, workers, per_worker, adaptive)


def set_torch_threads(n: int) -> None:
    """This OS thread's torch intra-op thread count (a no-op when it is already ``n``; the
    `get_num_threads` first, so that torch's lazy per-thread start-up cannot undo the setting)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def can_set_threads(predictor) -> bool:
    """Whether a batch's thread count can change per call: a torch model on a CPU (per OS
    thread), or OpenVINO (one compiled model per thread count); not ONNX Runtime (fixed when the
    session is made) nor a GPU."""
    from ..backends import TorchBackend

    backend = predictor.backend
    if isinstance(backend, TorchBackend):
        return predictor.device.type == "cpu"
    return callable(getattr(backend, "use_threads", None))


def thread_setter(predictor, policy: ThreadPolicy) -> Callable[[int], None] | None:
    """What a worker calls before a batch of ``threads`` threads: `set_torch_threads` for a torch
    model on a CPU; for OpenVINO, the compiled model of that many threads, with one stream for a
    batch that runs alone and ``policy.workers`` streams otherwise (so that the workers' batches
    run at once rather than queue on one stream); None for backends that fix their threads when
    loaded, and GPUs."""
    from ..backends import TorchBackend

    if not can_set_threads(predictor):
        return None
    if isinstance(predictor.backend, TorchBackend):
        return set_torch_threads
    use = predictor.backend.use_threads

    def set_runtime_threads(n: int) -> None:
        use(n, 1 if policy.is_solo(n) else policy.workers)

    return set_runtime_threads
