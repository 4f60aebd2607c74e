"""The recipe's optimizer (AdamW, no decay on biases and norms) and learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR
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


def build_scheduler(optimizer, cfg: Config, total_steps: int, replans=()):
    """The schedule over ``total_steps``; ``replans``: ``(step, new total)`` pairs, in order.

    A re-plan (a time budget's, `time_budget.BudgetGuard`) keeps the schedule up to its step and from
    there lets the learning rate fall from its value at that step to the schedule's end (zero;
    linearly, or along the cosine's half wave) at the new total, sooner or later than planned.
    """
    warmup = int(cfg.train.warmup_ratio * total_steps)
    if cfg.train.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = (
        get_cosine_schedule_with_warmup
        if cfg.train.schedule == "cosine"
        else get_linear_schedule_with_warmup
    )
    scheduler = make(optimizer, warmup, total_steps)
    if not replans:
        return scheduler
    factor = scheduler.lr_lambdas[0]
    for at, total in replans:
        factor = _replanned(factor, at, total, cfg.train.schedule == "cosine")
    return LambdaLR(optimizer, factor)


def _replanned(factor, at: int, total: int, cosine: bool):
    start, span = factor(at), max(total - at, 1)

    def replanned(step: int) -> float:
        if step <= at:
            return factor(step)
        x = min((step - at) / span, 1.0)
        return start * (0.5 * (1.0 + math.cos(math.pi * x)) if cosine else 1.0 - x)

    return replanned
