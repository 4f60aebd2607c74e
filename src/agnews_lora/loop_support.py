"""Small parts of the training loop: the stop signals (and their agreement across processes), the
logging window, the on_eval call."""

from __future__ import annotations

import signal
import time

import torch

# with several processes, the stop flag (SIGINT / SIGTERM) is all-reduced every N steps
STOP_SYNC_EVERY = 10


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag checked between steps."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def agreed(self, acc, step: int, last: bool) -> bool:
        """Whether the run stops after ``step``: a signal here, or, with several processes, in any
        of them (all-reduced every `STOP_SYNC_EVERY` steps and at the last, so that every process
        stops at the same step)."""
        if acc.num_processes == 1:
            return self.received is not None
        if step % STOP_SYNC_EVERY and not last:
            return False
        flag = torch.tensor([1.0 if self.received else 0.0], device=acc.device)
        stop = float(acc.reduce(flag, "sum")[0]) > 0
        if stop and self.received is None:
            self.received = signal.SIGTERM
        return stop


class LogWindow:
    """The logging window: summed loss (a device tensor: no wait), tokens, rows, wall time."""

    def __init__(self, device):
        self._zero = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.loss, self.tokens, self.rows, self.steps = self._zero, 0, 0, 0
        self.t0 = time.perf_counter()

    def add(self, loss: torch.Tensor, tokens: int, rows: int) -> None:
        self.loss, self.tokens, self.rows, self.steps = (
            self.loss + loss,
            self.tokens + tokens,
            self.rows + rows,
            self.steps + 1,
        )

    def exclude(self, seconds: float) -> None:
        """Leave time spent on something else (an evaluation) out of the window's throughput."""
        self.t0 += seconds


def call_on_eval(acc, on_eval, step: int, rec: dict) -> None:
    """Run ``on_eval(step, rec)`` on the main process; if it fails, every process stops."""
    failure = None
    if acc.is_main_process:
        try:
            on_eval(step, dict(rec))
        except BaseException as e:  # re-raised below, once every process knows
            failure = e
    if acc.num_processes > 1:  # the other processes must not wait for a main process that has left
        failed = torch.tensor([1.0 if failure is not None else 0.0], device=acc.device)
        if float(acc.reduce(failed, "sum")[0]) > 0 and failure is None:
            raise RuntimeError("training stopped: the on_eval callback failed on the main process")
    if failure is not None:
        raise failure
