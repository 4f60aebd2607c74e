"""`agnews-lora plan` as text: the head's share of the budget, the best-fitting layouts, and one grid
of exact counts per head choice (the layouts themselves come from `planning`)."""

from __future__ import annotations

from .heads import HEAD_CHOICES
from .planning import Layout, Plan

_HEAD_WHAT = {
    "full": ("classifier head", "lora.head=full: trained in full"),
    "out_proj": (
        "head out_proj only",
        "lora.head=out_proj: its dense layer frozen at the pooler or identity",
    ),
}


def _head_lines(p: Plan) -> list[str]:
    pl, b = p.planner, p.budget
    heads = sorted({lay.head for lay in p.layouts}, key=HEAD_CHOICES.index)
    lines = []
    for i, head in enumerate(heads):
        n, left = pl.head_params_for(head), b - pl.head_params_for(head)
        what, how = _HEAD_WHAT[head]
        rest = (
            f"{left:,} left for LoRA"
            if left > 0
            else "nothing left for LoRA: the head alone is over budget"
        )
        share = f"{100 * n / b:.1f} % of the budget"
        lines.append(f"{'head' if i == 0 else '':<10}{what} {n:,} = {share} ({how}); {rest}")
    if "out_proj" not in pl.head_choices():
        lines.append(
            f"{'':<10}(the head is a single Linear: lora.head=out_proj is the same as full here)"
        )
    return lines


def _grid(p: Plan, head: str) -> list[str]:
    pl = p.planner
    ranks = sorted({lay.r for lay in p.layouts})
    cells: dict[tuple[str, str], dict[int, Layout]] = {}
    for label, _ in pl.target_sets():
        for layers_label, _ in pl.layer_subsets():
            cells[(label, layers_label)] = {}
    for lay in p.layouts:
        if lay.head == head:
            cells.setdefault((lay.targets, lay.layers_label), {})[lay.r] = lay
    at = 8 if 8 in ranks else ranks[len(ranks) // 2]  # the cost barely moves with the rank
    lines = [
        f"  {'targets':<11} {'layers':<19}"
        + "".join(f"{'r=' + str(r):>12}" for r in ranks)
        + f"  cost/step (r={at})"
    ]
    for (label, layers_label), by_r in cells.items():
        row = ""
        for r in ranks:
            lay = by_r.get(r)
            cell = f"{lay.trainable_params:,}" + ("*" if lay.fits else " ") if lay else ""
            row += f"{cell:>12}"
        cost = f"{by_r[at].step_cost:>9.2f}" if at in by_r else ""
        lines.append(f"  {label:<11} {layers_label:<19}{row}  {cost}")
    return lines


def _top(fitting: list[Layout], b: int, with_head: bool) -> list[str]:
    width = max(len(",".join(lay.target_modules)) for lay in fitting)
    hw = 9 if with_head else 0
    lines = [
        f"  {'head' if hw else '':<{hw}}{'r':>3}  {'target_modules':<{width}}  {'layers':<19} "
        f"{'LoRA':>10} {'trainable':>11} {'of budget':>9} {'cost/step':>9}"
    ]
    for lay in fitting:
        lines.append(
            f"  {lay.head if hw else '':<{hw}}{lay.r:>3}  "
            f"{','.join(lay.target_modules):<{width}}  {lay.layers_label:<19} "
            f"{lay.lora_params:>10,} {lay.trainable_params:>11,} "
            f"{100 * lay.trainable_params / b:>8.1f}% {lay.step_cost:>9.2f}"
        )
    return lines


def format_plan(p: Plan, top: int = 10) -> str:
    pl, b, cfg = p.planner, p.budget, p.planner.model_config
    fitting = [lay for lay in p.layouts if lay.fits]
    heads = sorted({lay.head for lay in p.layouts}, key=HEAD_CHOICES.index)
    hidden = getattr(cfg, "hidden_size", getattr(cfg, "dim", "?"))
    lines = [
        f"model     {p.model}: {type(pl.model).__name__}, {pl.num_layers} layers, "
        f"hidden {hidden}, {pl.base_params:,} parameters (config only, no weights)"
    ]
    if p.note:
        lines.append(f"note      {p.note}")
    modules = ", ".join(f"{t.target} {t.in_features}x{t.out_features}" for t in pl.targets)
    shown = (
        f"the {min(top, len(fitting))} that use most of the budget:" if fitting else "none does."
    )
    lines += [
        f"budget    {b:,} trainable parameters",
        *_head_lines(p),
        f"modules   per layer: {modules}",
        "",
        f"{len(fitting)} of {len(p.layouts)} layouts fit; {shown}",
    ]
    if fitting:
        lines += _top(fitting[:top], b, len(heads) > 1)
    for head in heads:
        which = f", lora.head={head}:" if len(heads) > 1 else ":"
        lines += [
            "",
            f"trainable parameters of every layout (* = fits the budget){which}",
            *_grid(p, head),
        ]
    from .layout_cost import BASIS

    lines.append(f"  cost/step: {BASIS}")
    sets = pl.target_sets()
    lines.append("  " + "; ".join(f"{label} = [{', '.join(names)}]" for label, names in sets))
    if fitting:
        best = fitting[0]
        sets_ = f" --set 'lora.layers={best.layers}'" if best.layers is not None else ""
        head_ = f" --set lora.head={best.head}" if best.head != "full" else ""
        targets = ", ".join(best.target_modules)
        lines += [
            "",
            f"train the first: agnews-lora train --set lora.r={best.r} "
            f"--set 'lora.target_modules=[{targets}]'{sets_}{head_}",
        ]
    return "\n".join(lines)
