"""`agnews-lora plan`: which LoRA layouts fit a trainable-parameter budget, from the model config alone.

No weights are downloaded: the model is built once on the meta device and its ``nn.Linear``
modules are walked with PEFT's own target matching (``check_target_module_exists``, the
function ``get_peft_model`` uses), so each layout's LoRA count is exact and costs about a millisecond.
The classifier head is counted once per head choice (``lora.head``: ``full``, or ``out_proj`` with
the head's dense layer frozen) by a real (meta-device) PEFT build, which also checks the fast count
of one layout against ``count_params``.

The model's config comes from ``model_configs`` (built-in ones for well-known Hub ids, so ``plan``
works offline and never waits on the network for them).
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field

from .config import AG_NEWS_LABELS, LoraSettings
from .errors import UserError
from .heads import HEAD_CHOICES, differs_from_full
from .model_configs import resolve_model_config

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32)
_HEAD_NAMES = ("classifier", "score", "pre_classifier")  # as excluded in modeling.lora_config
_FORBIDDEN_TARGETS = ("classifier", "score", "out_proj")  # modeling.lora_config rejects these names
_ROLES = {
    "q": ("query", "q_proj", "q_lin", "q", "wq", "query_proj"),
    "k": ("key", "k_proj", "k_lin", "k", "wk", "key_proj"),
    "v": ("value", "v_proj", "v_lin", "v", "wv", "value_proj"),
}
_LAYER_INDEX = re.compile(
    r".*?\.[^.]*\.(?P<idx>\d+)\."
)  # PEFT's layers_to_transform match (no layers_pattern)

# ---------------------------------------------------------------------------------------------
# exact counting


def _lora_size(module, r: int) -> int | None:
    """LoRA A+B parameters PEFT adds to ``module`` at rank ``r`` (None: a type we do not count here)."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return r * (module.in_features + module.out_features)
    if isinstance(module, nn.Embedding):
        return r * (module.num_embeddings + module.embedding_dim)
    if isinstance(module, Conv1D):
        return r * sum(module.weight.shape)
    return None


@dataclass
class TargetInfo:
    """A LoRA-able Linear inside each encoder layer, and the PEFT target name that selects it."""

    target: str  # shortest target_modules entry that matches it (may match siblings too)
    path: str  # path inside a layer, e.g. attention.output.dense
    in_features: int
    out_features: int
    role: str | None  # q, k, v, o or None


@dataclass
class Layout:
    r: int
    target_modules: list[str]
    layers: list[int] | None  # null = all layers
    lora_params: int
    head_params: int
    other_params: int
    budget: int
    targets: str = ""  # short label, e.g. q,v
    layers_label: str = "all"
    head: str = "full"  # lora.head
    step_cost: float = 0.0  # modelled training cost per step (layout_cost.step_cost)
    trainable_params: int = field(init=False)
    fits: bool = field(init=False)

    def __post_init__(self):
        self.trainable_params = self.lora_params + self.head_params + self.other_params
        self.fits = self.trainable_params <= self.budget

    def to_dict(self) -> dict:
        return {**asdict(self), "budget_fraction": round(self.trainable_params / self.budget, 4)}


class Planner:
    """A meta-device model built once; exact LoRA counts for any layout by walking its modules."""

    def __init__(self, model_config, num_labels: int = len(AG_NEWS_LABELS)):
        import torch
        from transformers import AutoModelForSequenceClassification

        model_config = copy.deepcopy(model_config)
        model_config.num_labels = num_labels
        self.model_config = model_config
        with torch.device("meta"):
            try:
                self.model = AutoModelForSequenceClassification.from_config(model_config)
            except ValueError as e:
                raise UserError(
                    f"model type '{model_config.model_type}' has no sequence-classification model "
                    f"({str(e).splitlines()[0][:120]})"
                ) from None
        self.modules = [(n, m) for n, m in self.model.named_modules() if n]
        self.targets = self._discover()
        if not self.targets:
            raise UserError(
                f"no LoRA-able Linear layers found inside the encoder layers of this "
                f"{type(self.model).__name__}"
            )
        indices = {
            int(_LAYER_INDEX.match(n)["idx"]) for n, _ in self.modules if _LAYER_INDEX.match(n)
        }
        self.num_layers = max(indices) + 1
        self._heads: dict[str, tuple[int, int, int]] = {}  # lora.head -> head, other, total

    def head_choices(self) -> list[str]:
        """The ``lora.head`` values that differ here (a single-Linear head has only ``full``)."""
        return list(HEAD_CHOICES) if differs_from_full(self.model) else ["full"]

    # -- discovery -----------------------------------------------------------------------------
    def _discover(self) -> list[TargetInfo]:
        import torch.nn as nn

        found: dict[str, nn.Linear] = {}
        for name, mod in self.modules:
            m = _LAYER_INDEX.match(name)
            if (
                m
                and isinstance(mod, nn.Linear)
                and not any(h in name.split(".") for h in _HEAD_NAMES)
            ):
                found.setdefault(name[m.end() :], mod)
        out = []
        for path, mod in found.items():
            parts = path.split(".")
            target = path
            for k in range(1, len(parts) + 1):  # shortest suffix matching this path alone
                suffix = ".".join(parts[-k:])
                if suffix in _FORBIDDEN_TARGETS:
                    continue
                if [p for p in found if p == suffix or p.endswith("." + suffix)] == [path]:
                    target = suffix
                    break
            role = next((r for r, names in _ROLES.items() if parts[-1].lower() in names), None)
            if role is None and any(a in path.lower() for a in ("attention", "attn")):
                role = "o"
            out.append(TargetInfo(target, path, mod.in_features, mod.out_features, role))
        return out

    def target_sets(self) -> list[tuple[str, list[str]]]:
        """Readable target-module sets: q,v / q,k,v / q,k,v,o / all linear (where the model has them)."""
        by_role = {}
        for t in self.targets:
            by_role.setdefault(t.role, t.target)
        sets = []
        for label, roles in (("q,v", "qv"), ("q,k,v", "qkv"), ("q,k,v,o", "qkvo")):
            if all(r in by_role for r in roles):
                sets.append((label, [by_role[r] for r in roles]))
        last = []
        for t in self.targets:
            name = t.path.split(".")[-1]
            if name not in last:
                last.append(name if name not in _FORBIDDEN_TARGETS else t.target)
        sets.append(("all linear", last))
        unique, seen = [], set()
        for label, names in sets:
            if tuple(names) not in seen:
                seen.add(tuple(names))
                unique.append((label, names))
        return unique

    def layer_subsets(self) -> list[tuple[str, list[int] | None]]:
        n = self.num_layers
        subsets = [("all", None)]
        for label, k in (("top half", n // 2), ("top quarter", n // 4)):
            if 0 < k < n and list(range(n - k, n)) not in [s for _, s in subsets]:
                subsets.append(
                    (
                        f"{n - k}-{n - 1} ({label})" if k > 1 else f"{n - 1} ({label})",
                        list(range(n - k, n)),
                    )
                )
        return subsets

    # -- counting ------------------------------------------------------------------------------
    def exact(self, settings: LoraSettings):
        """``count_params`` of a real meta-device PEFT model (slow path, the reference)."""
        from .budget import count_params
        from .modeling import apply_lora

        return count_params(apply_lora(copy.deepcopy(self.model), settings))

    def lora_params(self, settings: LoraSettings) -> int | None:
        """Exact LoRA parameter count by PEFT's own matching; None where only a real build can tell."""
        from peft.tuners.tuners_utils import check_target_module_exists

        from .modeling import lora_config

        if settings.bias != "none":
            return None
        peft_config = lora_config(settings)
        # what PeftModelForSequenceClassification does before injecting: the head is never a LoRA target
        peft_config.modules_to_save = list(peft_config.modules_to_save or []) + [
            "classifier",
            "score",
        ]
        total, matched = 0, False
        for name, module in self.modules:
            if check_target_module_exists(peft_config, name):
                size = _lora_size(module, settings.r)
                if size is None:
                    return None
                total, matched = total + size, True
        if not matched:
            targets = ", ".join(settings.target_modules)
            raise UserError(
                f"LoRA layout does not fit this model (no module matches target_modules [{targets}]"
                + (f" in layers {settings.layers}" if settings.layers is not None else "")
                + ")"
            )
        return total

    def _head_counts(self, head: str = "full") -> tuple[int, int, int]:
        if head not in self._heads:
            settings = self._reference(head)
            ref = self.exact(settings)
            fast = self.lora_params(settings)
            if (
                fast is not None and fast != ref.lora
            ):  # PEFT changed its matching: never report a wrong count
                raise RuntimeError(
                    f"plan: fast LoRA count {fast} != PEFT's {ref.lora} for {settings}"
                )
            self._heads[head] = (ref.head, ref.other, ref.total - ref.lora)
        return self._heads[head]

    def _reference(self, head: str = "full") -> LoraSettings:
        """The layout checked against a real build: the broadest target set (all linear)."""
        return LoraSettings(r=1, target_modules=self.target_sets()[-1][1], head=head)

    def head_params_for(self, head: str) -> int:
        """Trainable parameters of the classifier head under ``lora.head=head``."""
        return self._head_counts(head)[0]

    @property
    def head_params(self) -> int:
        return self.head_params_for("full")

    @property
    def base_params(self) -> int:
        """All parameters of the model as saved (base + head), without LoRA."""
        return self._head_counts()[2]

    def layout(
        self, settings: LoraSettings, budget: int, targets: str = "", layers_label: str = "all"
    ) -> Layout:
        lora = self.lora_params(settings)
        if lora is None:
            c = self.exact(settings)
            lora, head, other = c.lora, c.head, c.other
        else:
            head, other, _ = self._head_counts(settings.head)
        from .layout_cost import step_cost

        layers = None if settings.layers is None else list(settings.layers)
        cost = round(step_cost(self, layers, lora, head + other), 4)
        return Layout(
            settings.r,
            list(settings.target_modules),
            layers,
            lora,
            head,
            other,
            budget,
            targets or ",".join(settings.target_modules),
            layers_label,
            settings.head,
            cost,
        )

    def enumerate(self, budget: int, ranks=DEFAULT_RANKS, heads=None) -> list[Layout]:
        """Every head choice x rank x target set x layer subset; fitting first, largest first."""
        layouts = [
            self.layout(
                LoraSettings(r=r, target_modules=names, layers=layers, head=head),
                budget,
                label,
                layers_label,
            )
            for head in (heads or self.head_choices())
            for label, names in self.target_sets()
            for layers_label, layers in self.layer_subsets()
            for r in ranks
        ]
        return sort_layouts(layouts)


def sort_layouts(layouts: list[Layout]) -> list[Layout]:
    """Fitting layouts by trainable params (desc; ties: more layers, then lower rank); then the rest ascending."""

    def key(lay: Layout):
        n_layers = -(lay.layers is None) * 10**6 - len(lay.layers or [])
        return (
            not lay.fits,
            -lay.trainable_params if lay.fits else lay.trainable_params,
            n_layers,
            lay.r,
        )

    return sorted(layouts, key=key)


@dataclass
class Plan:
    model: str
    note: str | None
    planner: Planner
    budget: int
    layouts: list[Layout]


def plan(
    model: str, budget: int, ranks=DEFAULT_RANKS, num_labels: int = len(AG_NEWS_LABELS), heads=None
) -> Plan:
    """Layouts for every head choice in ``heads`` (default: each ``lora.head`` differing here)."""
    if budget <= 0:
        raise UserError(f"--budget must be positive, got {budget}")
    if not ranks or any(r <= 0 for r in ranks):
        raise UserError("--ranks must be positive integers")
    if num_labels < 2:
        raise UserError(f"--num-labels must be at least 2, got {num_labels}")
    model_config, note = resolve_model_config(model)
    bad = [h for h in heads or () if h not in HEAD_CHOICES]
    if bad:
        raise UserError(f"head choice '{bad[0]}' is not one of {', '.join(HEAD_CHOICES)}")
    planner = Planner(model_config, num_labels)
    if heads:
        heads = [h for h in HEAD_CHOICES if h in heads and h in planner.head_choices()] or ["full"]
    layouts = planner.enumerate(budget, tuple(sorted(set(ranks))), heads)
    return Plan(model, note, planner, budget, layouts)


# ---------------------------------------------------------------------------------------------
# output
