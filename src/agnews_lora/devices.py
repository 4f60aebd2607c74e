"""Which numeric precision to use where: bf16 where the hardware runs it fast, else fp32."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time

import torch

from .errors import UserError

# bf16 is chosen on a CPU only where its matmuls run at least this much faster than fp32's. Measured
# (docs/performance.md): ~7x on the AMX Xeon, ~4x on the AVX512-BF16 EPYC (Zen 4), 0.5x on a Xeon whose
# hypervisor hides AMX but shows avx512_bf16 — far from the line either way.
BF16_MIN_SPEEDUP = 1.25
_DTYPES = (torch.float32, torch.bfloat16)  # the probe's two precisions


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def bf16_speedup(n: int = 768, reps: int = 5) -> float | None:
    """How many times faster a bf16 ``n x n`` matmul runs than an fp32 one on this CPU (medians over
    ``reps`` alternating rounds, ~0.1 s); None where the CPU reports no bf16 instructions at all."""
    if not ({"amx_bf16", "avx512_bf16"} & cpu_flags()):
        return None
    gen = torch.Generator().manual_seed(0)  # the global RNG (a run's seed) is left alone
    x, y = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    pairs = {dtype: (x.to(dtype), y.to(dtype)) for dtype in _DTYPES}
    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in _DTYPES}
    for i in range(reps + 2):  # alternating, so that a busy neighbour slows both alike
        for dtype, (x, y) in pairs.items():
            seconds = _time_matmul(x, y)
            if i >= 2:  # the first two rounds: allocation and kernel selection
                times[dtype].append(seconds)
    fp32, bf16 = (statistics.median(times[dtype]) for dtype in _DTYPES)
    return fp32 / bf16


def _time_matmul(x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    x @ y
    return time.perf_counter() - t0


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where this CPU runs bf16 matmuls clearly faster than fp32 (by `BF16_MIN_SPEEDUP`).

    The flags alone do not say it: AMX and AVX512-BF16 make bf16 several times faster, but a virtual
    machine may show avx512_bf16 while hiding AMX, and there oneDNN's bf16 kernels run at half fp32's
    pace — so a short measured probe decides, and only on CPUs whose flags offer bf16 at all.
    """
    speedup = bf16_speedup()
    return speedup is not None and speedup >= BF16_MIN_SPEEDUP


def precision_reason(requested: str, device_type: str) -> str:
    """Why ``requested`` resolves as it does, for the run's log: '' unless it is 'auto' on a CPU."""
    if requested != "auto" or device_type != "cpu":
        return ""
    speedup = bf16_speedup()
    if speedup is None:
        return "auto: this CPU has no bf16 instructions"
    return f"auto: bf16 matmuls measured {speedup:.1f}x fp32's pace on this CPU"


def resolve_precision(requested: str, device_type: str) -> str:
    """Map 'auto' to the best precision for ``device_type`` ('cpu' or 'cuda'); reject impossible ones."""
    cuda = device_type == "cuda"
    if requested == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if requested == "fp16" and not cuda:
        raise UserError("train.precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' (or 'auto')")
    if requested == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use train.precision 'fp16' or 'auto'")
    return requested


def autocast_context(precision: str, device_type: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)


def cast_frozen_linears(model, dtype: torch.dtype = torch.bfloat16) -> int:
    """Store the weights of frozen ``nn.Linear`` layers in ``dtype``; return how many parameters were cast.

    Under autocast every matmul casts its fp32 weight to bf16 on every forward pass: autocast caches
    casts only for weights that require grad, and a LoRA base is frozen. Storing those weights in bf16
    once gives bit-identical outputs and gradients (autocast would round them the same way), with no
    per-step cast and half the weight memory. Trainable layers (LoRA matrices, the head) stay fp32, and
    so do embeddings and LayerNorms. Only for code that runs the model under bf16 autocast.
    """
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and not any(
            p.requires_grad for p in module.parameters()
        ):
            if module.weight.dtype != dtype:
                module.to(dtype)
                n += sum(p.numel() for p in module.parameters())
    return n


def has_cast_linears(model) -> bool:
    """True if some ``nn.Linear`` stores reduced-precision weights (see `cast_frozen_linears`)."""
    return any(
        type(m) is torch.nn.Linear and m.weight.dtype in (torch.bfloat16, torch.float16)
        for m in model.modules()
    )
