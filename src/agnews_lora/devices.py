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
