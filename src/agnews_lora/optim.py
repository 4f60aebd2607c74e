"""The recipe's optimizer (AdamW, no decay on biases and norms) and learning-rate schedule."""

from __future__ import annotations

import torch
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from .config import Config


def build_optimizer(model, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # on a GPU one fused kernel updates every LoRA matrix (the step is launch-bound there); CPU
    # keeps torch's default
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate, fused=fused)


def build_scheduler(optimizer, cfg: Config, total_steps: int):
    warmup = int(cfg.train.warmup_ratio * total_steps)
    if cfg.train.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if cfg.train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
