"""The tune file and its search space: LoRA layouts (what `plan` enumerates) x the recipe.

A layout is ``lora.r`` x ``lora.target_modules`` x ``lora.layers`` (x ``lora.head`` where the
config has that key).  Every combination is counted exactly (``planning.Planner``, no weights)
before the study starts: values that fit the budget in no combination are dropped from the space,
and a combination that is over budget and still sampled is recorded without training (tune.py).
The recipe part maps any config key to a list of choices or a range ``{low, high, log, step}``.
Format: docs/tuning.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .errors import UserError
from .sweep import _pairs, _set_strings, read_study_file

log = logging.getLogger(__name__)

TUNE_KEYS = (
    "base_config",
    "output_dir",
    "study_name",
    "storage",
    "n_trials",
    "timeout",
    "objective",
    "sampler",
    "seed",
    "pruner",
    "heartbeat_seconds",
    "overrides",
    "layout",
    "params",
)
OBJECTIVES = {
    "accuracy": ("maximize",),
    "accuracy,params": ("maximize", "minimize"),
    "accuracy,time": ("maximize", "minimize"),
}
SAMPLERS = ("tpe", "random", "grid", "nsga2")
PRUNERS = ("median", "hyperband", "none")
LAYOUT_KEYS = ("r", "target_modules", "layers", "head")
LAYER_WORDS = {"all": "all", "top half": "top half", "top quarter": "top quarter"}


@dataclass
class Param:
    """One recipe parameter: a categorical list, or a numeric range."""

    key: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    encoded: bool = False  # choices are JSON strings (lists / mappings are not Optuna choices)

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            value = trial.suggest_categorical(self.key, self.choices)
            return json.loads(value) if self.encoded else value
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(
                self.key, self.low, self.high, step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.key, float(self.low), float(self.high), step=self.step, log=self.log
        )


@dataclass
class Layouts:
    """The layout part of the space: labelled choices per dimension, exact count per combo."""

    budget: int
    dims: dict[str, dict[str, Any]]  # config key -> {label: value}
    counts: dict[tuple, int] = field(
        default_factory=dict
    )  # (label, ...) in dims order -> trainable
    dropped: list[str] = field(default_factory=list)

    def fits(self, labels: tuple) -> bool:
        return self.counts.get(labels, 0) <= self.budget

    def fitting(self) -> list[tuple]:
        return [k for k in self.counts if self.fits(k)]


@dataclass
class TuneSpec:
    path: Path
    base_config: Path | None
    output_dir: Path
    study_name: str
    storage: str | None
    n_trials: int | None
    timeout: float | None
    objective: str
    sampler: str
    seed: int | None
    pruner: str | dict
    heartbeat_seconds: int
    overrides: dict[str, Any]
    layout: dict[str, Any]
    params: list[Param]
    base: Config | None = None  # base config + overrides (+ --set)
    layouts: Layouts | None = None

    @property
    def directions(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective]

    def config(self, sets: dict[str, Any]) -> Config:
        """base config + shared overrides + this trial's values (strictly checked)."""
        return load_config(self.base_config, _set_strings({**self.overrides, **sets}))

    def keys(self) -> list[str]:
        return [*(self.layouts.dims if self.layouts else []), *(p.key for p in self.params)]

    def grid(self) -> dict[str, list]:
        """The search space for Optuna's GridSampler (every dimension must be a list)."""
        space = {k: list(v) for k, v in (self.layouts.dims if self.layouts else {}).items()}
        for p in self.params:
            if p.choices is None:
                raise UserError(
                    f"tune file '{self.path}': sampler 'grid' needs a list of values for "
                    f"'{p.key}', not a range"
                )
            space[p.key] = list(p.choices)
        return space

    def suggest(self, trial) -> tuple[dict[str, Any], dict[str, str]]:
        """Sample one trial: (config key -> value, config key -> short label)."""
        sets, labels = {}, {}
        for key, choices in (self.layouts.dims if self.layouts else {}).items():
            label = trial.suggest_categorical(key, list(choices))
            sets[key], labels[key] = choices[label], str(label)
        for p in self.params:
            value = p.suggest(trial)
            sets[p.key], labels[p.key] = (
                value,
                f"{value:.3g}" if isinstance(value, float) else str(value),
            )
        return sets, labels

    def layout_labels(self, params: dict) -> tuple:
        return tuple(str(params.get(k)) for k in (self.layouts.dims if self.layouts else {}))


# ---------------------------------------------------------------------------------------------
# reading


def _param(key: str, spec: Any, where: str) -> Param:
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where}: '{key}' has no values")
        encoded = any(isinstance(v, (list, dict)) for v in spec)
        return Param(key, choices=[json.dumps(v) if encoded else v for v in spec], encoded=encoded)
    if (
        isinstance(spec, dict)
        and {"low", "high"} <= set(spec)
        and set(spec) <= {"low", "high", "log", "step"}
    ):
        low, high = spec["low"], spec["high"]
        if (
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
            or low >= high
        ):
            raise UserError(f"{where}: '{key}' needs numbers low < high, got {low!r}, {high!r}")
        if spec.get("log") and low <= 0:
            raise UserError(f"{where}: '{key}' with log: true needs low > 0")
        return Param(
            key, low=low, high=high, log=bool(spec.get("log", False)), step=spec.get("step")
        )
    raise UserError(
        f"{where}: '{key}' must be a list of values or a range {{low: ..., high: ..., log: true}}"
    )


def load_tune(
    path: str | Path,
    output_dir=None,
    storage=None,
    n_trials=None,
    timeout=None,
    sets: list[str] | None = None,
) -> TuneSpec:
    """Read and validate a tune file (command-line values win); the base config is strict."""
    path = Path(path)
    where = f"tune file '{path}'"
    data, base = read_study_file(path, "tune", TUNE_KEYS)
    objective = str(data.get("objective", "accuracy")).replace(" ", "")
    if objective not in OBJECTIVES:
        raise UserError(
            f"{where}: objective must be one of {', '.join(OBJECTIVES)}; got '{objective}'"
        )
    sampler = str(data.get("sampler", "tpe"))
    if sampler not in SAMPLERS:
        raise UserError(f"{where}: sampler must be one of {', '.join(SAMPLERS)}; got '{sampler}'")
    pruner = data.get("pruner", "median")
    name = pruner.get("name") if isinstance(pruner, dict) else pruner
    if name not in PRUNERS:
        raise UserError(
            f"{where}: pruner must be one of {', '.join(PRUNERS)} (or {{name: ..., options}})"
        )
    overrides = _pairs(data.get("overrides"), f"{where} overrides")
    for item in sets or []:
        overrides.update(_pairs([item], "--set"))
    layout = data.get("layout") or {}
    if not isinstance(layout, dict) or set(layout) - set(LAYOUT_KEYS):
        raise UserError(f"{where}: 'layout' maps {', '.join(LAYOUT_KEYS)} to lists of choices")
    params_raw = _pairs(data.get("params"), f"{where} params")
    for key in params_raw:
        if key in ("lora.r", "lora.target_modules", "lora.layers", "lora.head"):
            raise UserError(f"{where}: '{key}' belongs under 'layout' (counted against the budget)")
    trials = n_trials if n_trials is not None else data.get("n_trials")
    if trials is not None and (not isinstance(trials, int) or trials <= 0):
        raise UserError(f"n_trials must be a positive integer, got {trials!r}")
    spec = TuneSpec(
        path=path,
        base_config=base,
        output_dir=Path(output_dir or data.get("output_dir") or Path("tunes") / path.stem),
        study_name=str(data.get("study_name") or path.stem),
        storage=storage or data.get("storage"),
        n_trials=trials,
        timeout=timeout if timeout is not None else data.get("timeout"),
        objective=objective,
        sampler=sampler,
        seed=data.get("seed"),
        pruner=pruner,
        heartbeat_seconds=int(data.get("heartbeat_seconds", 60)),
        overrides=overrides,
        layout=layout,
        params=[_param(k, v, f"{where} params") for k, v in params_raw.items()],
    )
    if spec.heartbeat_seconds <= 0:
        raise UserError(f"{where}: heartbeat_seconds must be positive")
    try:
        spec.base = spec.config({})
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for p in spec.params:  # every recipe key and value is checked as strictly as --set
        for value in p.choices if p.choices is not None else [p.low, p.high]:
            try:
                spec.config({p.key: json.loads(value) if p.encoded else value})
            except UserError as e:
                raise UserError(f"{where} params: {e}") from None
    spec.layouts = build_layouts(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# layouts under the budget


def _labelled(values: Any, known: dict[str, Any], what: str, where: str) -> dict[str, Any]:
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    if not isinstance(values, list) or not values:
        raise UserError(
            f"{where}: layout '{what}' must be a non-empty list (or a mapping label -> value)"
        )
    out = {}
    for v in values:
        if isinstance(v, str) and v in known:
            out[v] = known[v]
        elif isinstance(v, str):
            raise UserError(
                f"{where}: layout {what} '{v}' is not one of {', '.join(known)} "
                f"(or give a mapping label -> value)"
            )
        else:
            out[json.dumps(v)] = v
    return out


def build_layouts(spec: TuneSpec) -> Layouts:
    """Exact trainable counts of every layout combination; drop values that never fit the budget."""
    from .model_configs import resolve_model_config
    from .planning import DEFAULT_RANKS, Planner

    cfg, where = spec.base, f"tune file '{spec.path}'"
    model_config, _ = resolve_model_config(cfg.model.name_or_path)
    planner = Planner(model_config, len(cfg.data.label_names))
    lay = spec.layout
    ranks = lay.get("r", list(DEFAULT_RANKS))
    if (
        not isinstance(ranks, list)
        or not ranks
        or any(not isinstance(r, int) or r <= 0 for r in ranks)
    ):
        raise UserError(f"{where}: layout r must be a list of positive integers")
    dims: dict[str, dict[str, Any]] = {"lora.r": {str(r): r for r in ranks}}
    targets = dict(planner.target_sets())
    dims["lora.target_modules"] = _labelled(
        lay.get("target_modules", list(targets)), targets, "target_modules", where
    )
    subsets = {}
    for label, layers in planner.layer_subsets():
        subsets[next((w for w in LAYER_WORDS if w in label), label)] = layers
    dims["lora.layers"] = _labelled(lay.get("layers", list(subsets)), subsets, "layers", where)
    if "head" in lay or hasattr(cfg.lora, "head"):
        if not hasattr(cfg.lora, "head"):
            raise UserError(
                f"{where}: layout 'head' needs a config with lora.head (this version has none)"
            )
        heads = lay.get("head", [cfg.lora.head])
        dims["lora.head"] = _labelled(
            heads, {h: h for h in heads if isinstance(h, str)}, "head", where
        )
    keys = list(dims)
    layouts = Layouts(cfg.budget.max_trainable_params, dims)
    head_other: dict[Any, int] = {}
    for combo in itertools.product(*(list(d) for d in dims.values())):
        values = {k: dims[k][label] for k, label in zip(keys, combo)}
        lora_kw = {k.split(".")[1]: v for k, v in values.items()}
        settings = dataclasses.replace(cfg.lora, **lora_kw)
        try:
            lora = planner.lora_params(settings)
            head = lora_kw.get("head")
            if lora is None or head not in head_other:
                counts = _plan_counts(spec.config(values))
                head_other.setdefault(head, counts.trainable - counts.lora)
                lora = counts.lora if lora is None else lora
        except UserError as e:
            raise UserError(f"{where}: layout {dict(zip(keys, combo))}: {e}") from None
        layouts.counts[combo] = lora + head_other[head]
    fitting = layouts.fitting()
    if not fitting:
        smallest = min(layouts.counts.values())
        raise UserError(
            f"{where}: no layout fits budget.max_trainable_params {layouts.budget:,} (the smallest "
            f"needs {smallest:,}); raise the budget or add smaller ranks / fewer modules"
        )
    for i, key in enumerate(keys):  # a value that fits in no combination is not searched at all
        for label in list(dims[key]):
            if not any(c[i] == label for c in fitting):
                del dims[key][label]
                layouts.dropped.append(f"{key}={label}")
    layouts.counts = {
        c: n
        for c, n in layouts.counts.items()
        if all(label in dims[k] for k, label in zip(keys, c))
    }
    return layouts


def _plan_counts(cfg: Config):
    try:  # moving to planning in a parallel change; training keeps it today
        from .planning import plan_counts
    except ImportError:
        from .training import plan_counts
    return plan_counts(cfg)
