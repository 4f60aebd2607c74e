"""Dropout that does not dominate CPU training.

On a CPU, torch draws every dropout mask one element at a time from its single-threaded Mersenne
Twister (``aten::bernoulli_``).  A roberta-base LoRA step on 32 AG News rows draws 63 masks
(embeddings, two per layer after the attention output and the FFN, the attention probabilities,
PEFT's LoRA-input dropout on query and value, two in the classifier head): 457 ms per step on a
2-core AMX Xeon, 30 % of the step and more than all its matrix products' 454 ms
(``benchmarks/profile_step.py --set train.fast_cpu_dropout=false``).

Here a mask is 16-bit integers from numpy's PCG64, compared with a threshold.  Attention runs as
plain matrix products while training so that its dropout can use the same masks; torch's CPU SDPA
falls back to the bernoulli path with dropout, and its flash kernel's
backward is slower than plain matrix products at AG News lengths.  Inference keeps SDPA.

Every mask's seed is drawn from torch's default generator, so ``torch.manual_seed`` (which the
training loop calls per step) makes a run reproducible and resumable, as with torch's own dropout.
The keep probability is ``1 - round(p * 65536) / 65536`` (0.9 +- 1e-5 for p = 0.1), and kept values
are scaled by its inverse, so the expectation is exact.  Only for CPU training: CUDA's dropout is a
fused kernel already.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

ATTENTION_NAME = "agnews_lora_cpu_train"
MAX_MATH_ATTENTION = (
    256 * 256
)  # longer query x key go to SDPA, as without fast dropout (bounds the L^2 memory kept here)
_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> tuple[torch.Tensor, float]:
    """A boolean mask of ``shape`` that keeps each element with probability ``1 - p``, and its scale."""
    dropped = round(p * _LEVELS)
    if dropped >= _LEVELS:
        raise ValueError(f"dropout probability must be < 1, got {p}")
    seed = int(
        torch.randint(0, 2**62, (1,)).item()
    )  # from torch's generator: torch.manual_seed governs it
    n = math.prod(shape)
    words = (
        np.random.PCG64(seed).random_raw(-(-n // 4)).view(np.uint16)[:n]
    )  # four 16-bit draws per 64-bit word
    keep = torch.from_numpy(words >= dropped).view(shape)
    return keep, _LEVELS / (_LEVELS - dropped)


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p, training=True)`` with the mask drawn by `keep_mask` (CPU tensors)."""
    if p <= 0.0:
        return x
    keep, scale = keep_mask(x.shape, p)
    noise = keep.to(x.dtype).mul_(scale)
    return (
        x * noise
    )  # autograd keeps `noise` for the backward pass, as torch's own CPU dropout does


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose training-mode masks come from `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return fast_dropout(x, self.p)


def attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
):
    """Attention for ``transformers``' AttentionInterface: plain matmuls + `fast_dropout` while training.

    Outside training, with long sequences, or off the CPU, it is transformers' SDPA attention. The mask
    is SDPA's (boolean, True = attend, or None); returns ``(output [batch, query, heads, dim], None)``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    math_path = (
        module.training
        and query.device.type == "cpu"
        and query.shape[-2] * key.shape[-2] <= MAX_MATH_ATTENTION
    )
    if (
        not math_path
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if getattr(module, "num_key_value_groups", 1) > 1:
        key = key.repeat_interleave(module.num_key_value_groups, dim=1)
        value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif getattr(module, "is_causal", False) and query.shape[-2] > 1:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril(
            key.shape[-2] - query.shape[-2]
        )
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    probs = fast_dropout(probs, dropout)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def _swap_dropouts(model, old: type, new: type) -> int:
    """Replace every module of exactly type ``old`` by a ``new`` with the same p and mode; count them."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is old:
                replacement = new(child.p, child.inplace)
                replacement.train(child.training)
                setattr(module, name, replacement)
                swapped += 1
    return swapped


def _base(model):
    """The transformers model inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_fast_dropout(model) -> dict:
    """Swap the model's ``nn.Dropout`` modules for `FastDropout` and its SDPA/eager attention for
    `attention_forward`, in place. Returns what changed (for the log and `restore_dropout`)."""
    swapped = _swap_dropouts(model, nn.Dropout, FastDropout)
    base = _base(model)
    attn = getattr(base.config, "_attn_implementation", None)
    changed_attn = None
    if attn in ("sdpa", "eager") and hasattr(base, "set_attn_implementation"):
        _register()
        base.set_attn_implementation(ATTENTION_NAME)
        if base.config._attn_implementation == ATTENTION_NAME:
            changed_attn = attn
    return {"dropout_modules": swapped, "attention_from": changed_attn}


def restore_dropout(model, changed: dict) -> None:
    """Undo `use_fast_dropout` (torch's own dropout modules and the original attention)."""
    _swap_dropouts(model, FastDropout, nn.Dropout)
    if changed.get("attention_from"):
        _base(model).set_attn_implementation(changed["attention_from"])
