"""Which numeric precision to use where: bf16 where the hardware runs it fast, else fp32."""

from __future__ import annotations

import contextlib
import functools

import torch

from .errors import UserError


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16 (oneDNN then runs bf16 matmuls several times faster)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


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
