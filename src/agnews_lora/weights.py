"""The trainable weights of a PEFT model (LoRA matrices + classifier head) as a plain dict.

Used by the training loop (best-so-far weights, checkpoints) and by the export (the best weights
back into the model, a bf16-stored base rebuilt in fp32).
"""

from __future__ import annotations

import torch

from .errors import UserError


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Every trainable parameter, detached, as an fp32 CPU copy."""
    return {
        n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from `trainable_state`) into ``model``; an unknown name is a UserError."""
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise UserError(f"checkpoint does not match this model (unknown parameter '{missing[0]}')")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].dtype))
