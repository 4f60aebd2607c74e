"""The modelled training cost of one step of a LoRA layout, for `plan` (no timing, no weights).

Counted from the model config (matrix-product FLOPs per sequence of ``seq_len`` tokens):

* forward through every layer: ``2 * P`` per token (``P``: the weights of a layer's Linears) plus
  attention ``4 * seq_len * d`` per token (scores and the weighted sum);
* backward only from the lowest LoRA layer up (nothing below it has a trainable parameter): the
  frozen Linears need their input gradients only (``1x`` their forward), attention ``2x``;
* the LoRA matrices: ``6 x`` their parameters per token (forward, input and weight gradients);
* the trained head: ``6 x`` its parameters, once per sequence (it reads one token).

Embeddings, LayerNorm, GELU, softmax, dropout and the optimizer are not counted. The cost is
relative to a forward pass plus backpropagation through every layer without LoRA (= 1.00), so
"all layers" layouts come out a little above 1 and "top quarter" ones near the forward pass's
share. ``benchmarks/layout_cost.py`` compares it with measured step times.
"""

from __future__ import annotations

SEQ_LEN = 64  # tokens per text for the attention term: about an AG News text
BASIS = (
    "modelled (not timed): matmul FLOPs of a training step relative to forward + backward\n"
    f"  through every layer = 1.00, at {SEQ_LEN} tokens per text; LoRA only in upper layers "
    "skips the backward below them"
)


def _per_layer(planner, seq_len: int) -> tuple[float, float]:
    """(forward, backward with a frozen base) FLOPs of one encoder layer per sequence."""
    cfg = planner.model_config
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", 0)
    weights = sum(t.in_features * t.out_features for t in planner.targets)
    attention = 4 * seq_len * seq_len * d
    linear = 2 * seq_len * weights
    return linear + attention, linear + 2 * attention


def step_cost(
    planner, layers: list[int] | None, lora_params: int, head_params: int, seq_len: int = SEQ_LEN
) -> float:
    """Modelled training FLOPs of one step relative to full backpropagation without LoRA."""
    n = planner.num_layers
    fwd, bwd = _per_layer(planner, seq_len)
    lowest = min(layers) if layers else 0
    cost = n * fwd + (n - lowest) * bwd + 6 * seq_len * lora_params + 6 * head_params
    return cost / (n * (fwd + bwd))
