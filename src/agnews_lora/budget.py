"""Exact trainable-parameter accounting and the hard budget check."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UserError


@dataclass
class ParamCounts:
    lora: int  # LoRA A/B matrices
    head: int  # the classifier head's trained part (lora.head), saved with the adapter
    other: int  # anything else left trainable (e.g. biases with lora.bias != 'none')
    trainable: int
    total: int  # all parameters of the model as trained (base + LoRA + head copy)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"trainable parameters: {self.trainable:,} = LoRA {self.lora:,} + classifier head {self.head:,}"
            + (f" + other {self.other:,}" if self.other else "")
            + f" (of {self.total:,} in the model, {100 * self.trainable / max(self.total, 1):.2f} %)"
        )


def count_params(peft_model) -> ParamCounts:
    """Count the trainable parameters of a PEFT model by kind (works on meta-device models too)."""
    lora = head = other = total = 0
    seen_head_originals = 0
    for name, p in peft_model.named_parameters():
        n = p.numel()
        total += n
        if "original_module" in name:
            seen_head_originals += n
        if not p.requires_grad:
            continue
        if "lora_" in name:
            lora += n
        elif "modules_to_save" in name:
            head += n
        else:
            other += n
    # PEFT keeps a frozen copy of the head next to the trained one; count the model as saved/merged.
    total -= seen_head_originals
    return ParamCounts(
        lora=lora, head=head, other=other, trainable=lora + head + other, total=total
    )


def check_budget(counts: ParamCounts, max_trainable: int) -> None:
    if counts.trainable > max_trainable:
        raise UserError(
            f"over budget: {counts.trainable:,} trainable parameters (LoRA {counts.lora:,} + head {counts.head:,}"
            + (f" + other {counts.other:,}" if counts.other else "")
            + f") > budget.max_trainable_params {max_trainable:,}; lower lora.r, target fewer modules "
            f"or layers, or train only the head's output layer with lora.head=out_proj "
            f"(see `agnews-lora plan --budget {max_trainable}`)"
        )
