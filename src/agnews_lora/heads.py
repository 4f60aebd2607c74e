"""The classification head as a budget choice (``lora.head``).

- ``full``: the head is trained in full (PEFT's ``modules_to_save``); on roberta-base and MPNet
  that is a dense 768x768 layer + an output projection 768x4 = 593,668 parameters (59 % of 1M).
- ``out_proj``: the head's dense layer is frozen and only its output projection trains (3,076
  parameters at hidden 768). The frozen dense starts from the checkpoint's pre-trained pooler
  (``pooler.dense``: the same dense + tanh on the first token) where the checkpoint has one, else
  from identity with zero bias. Its values are part of the saved head copy, so ``adapter/`` reloads
  and ``merged/`` exports exactly what was trained.

Heads that are a single Linear (BERT / MiniLM / DistilBERT ``classifier``) have no dense layer to
freeze: there ``out_proj`` is the same as ``full``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

log = logging.getLogger(__name__)

HEAD_CHOICES = ("full", "out_proj")
HEAD_MODULES = ("classifier", "score")  # what PEFT's SEQ_CLS task puts in modules_to_save


def classifier_head(model) -> nn.Module | None:
    """The (unwrapped) classification head module of a transformers model, or None."""
    for name in HEAD_MODULES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def head_dense(model, choice: str) -> nn.Linear | None:
    """The head's dense layer that ``choice`` freezes (None: nothing to freeze, it all trains)."""
    if choice == "full":
        return None
    head = classifier_head(model)
    if head is None or isinstance(head, nn.Linear):
        return None  # a single Linear head: out_proj == full
    dense, out = getattr(head, "dense", None), getattr(head, "out_proj", None)
    if isinstance(dense, nn.Linear) and isinstance(out, nn.Linear):
        return dense
    raise UserError(
        f"lora.head={choice}: the head of {type(model).__name__} ({type(head).__name__}) has no "
        f"dense + out_proj layers to split; use lora.head=full"
    )


def differs_from_full(model) -> bool:
    """Whether ``out_proj`` trains fewer parameters than ``full`` on this model."""
    return head_dense(model, "out_proj") is not None


def _weights_files(path: str) -> list[Path]:
    """The safetensors files of a checkpoint (a local dir, or a Hub id in the local cache)."""
    local = Path(path)
    if not local.is_dir():
        try:
            from transformers.utils import cached_file

            found = cached_file(
                path,
                "model.safetensors",
                local_files_only=True,
                _raise_exceptions_for_missing_entries=False,
            )
        except (OSError, ValueError):
            return []
        return [Path(found)] if found else []
    if (local / "model.safetensors").is_file():
        return [local / "model.safetensors"]
    index = local / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [local / s for s in shards]
    return []


def pretrained_pooler(path: str, hidden: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``pooler.dense`` (weight, bias) of the checkpoint at ``path``, or None where it has none."""
    from safetensors import safe_open

    for file in _weights_files(path):
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
            w = next(
                (
                    k
                    for k in keys
                    if k == "pooler.dense.weight" or k.endswith(".pooler.dense.weight")
                ),
                None,
            )
            if w is None or w[: -len("weight")] + "bias" not in keys:
                continue
            weight, bias = f.get_tensor(w), f.get_tensor(w[: -len("weight")] + "bias")
            if tuple(weight.shape) == (hidden, hidden) and tuple(bias.shape) == (hidden,):
                return weight, bias
    return None


def init_frozen_dense(model, dense: nn.Linear) -> str:
    """Set the dense layer to the checkpoint's pooler (else identity, zero bias); returns which."""
    if dense.weight.is_meta:  # a weightless model for counting only
        return "meta"
    pooler = pretrained_pooler(getattr(model, "name_or_path", "") or "", dense.in_features)
    if dense.in_features != dense.out_features and pooler is None:
        raise UserError(
            f"lora.head=out_proj: the head's dense layer is "
            f"{dense.in_features}x{dense.out_features}, "
            f"not square, and the checkpoint has no pooler to start it from; use lora.head=full"
        )
    with torch.no_grad():
        if pooler is not None:
            dense.weight.copy_(pooler[0].to(dense.weight.dtype))
            dense.bias.copy_(pooler[1].to(dense.bias.dtype))
            return "pooler"
        dense.weight.copy_(torch.eye(dense.out_features, dtype=dense.weight.dtype))
        dense.bias.zero_()
    return "identity"


def freeze_saved_dense(peft_model) -> int:
    """Freeze the dense layer in PEFT's trained copies of the head; returns parameters frozen."""
    from peft.utils.other import ModulesToSaveWrapper

    frozen = 0
    for module in peft_model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for copy_ in module.modules_to_save.values():
                dense = getattr(copy_, "dense", None)
                if isinstance(dense, nn.Linear):
                    dense.requires_grad_(False)
                    frozen += sum(p.numel() for p in dense.parameters())
    return frozen
