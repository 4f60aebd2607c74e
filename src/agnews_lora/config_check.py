"""Checking config values against their dataclass field: type (``Literal``, ``list[int]``,
``str | None``, ...), bounds from the field metadata, and unknown keys with a suggestion.

Every failure is a one-line :class:`UserError` of bounded length.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal

from .errors import UserError
from .safe_yaml import clip, show

INT_MAX = 2**63 - 1  # every integer must fit in int64 (torch / numpy counters)


_SYNONYMS = {
    "rank": "r",
    "lora_r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lr": "learning_rate",
    "batch_size": "per_device_batch_size",
    "train_batch_size": "per_device_batch_size",
    "gradient_accumulation_steps": "grad_accumulation",
    "num_train_epochs": "epochs",
    "model": "name_or_path",
    "model_name": "name_or_path",
    "warmup": "warmup_ratio",
    "lr_scheduler_type": "schedule",
}


def _suggest(key: str, options: list[str]) -> str:
    if _SYNONYMS.get(key) in options:
        return f" (did you mean '{_SYNONYMS[key]}'?)"
    close = difflib.get_close_matches(key[:100], options, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(options)})"


def fail(where: str, what: str) -> UserError:
    return UserError(clip(f"config key '{clip(where, 80)}' {what}"))


def type_hints(section: Any) -> dict[str, Any]:
    """Field name -> resolved annotation of a config dataclass (or instance)."""
    cls = section if isinstance(section, type) else type(section)
    return typing.get_type_hints(cls)


def check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked (and, where YAML is loose, converted) against the annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) > 1:  # e.g. ``str | float``: the first kind that takes the value
            for kind in kinds[:-1]:
                try:
                    return check_type(value, kind, where)
                except UserError:
                    pass
        hint = kinds[-1]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        raise fail(where, "must not be null")
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            raise fail(where, f"must be one of {', '.join(args)}; got {show(value)}")
        return value
    if origin is list:
        if isinstance(value, str):  # --set lora.target_modules=query,value
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise fail(where, f"must be a list, got {show(value)}")
        item = args[0] if args else Any
        return [check_type(_from_text(v, item), item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(where, f"must be true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(where, f"must be an integer, got {show(value)}")
        if abs(value) > INT_MAX:
            raise fail(where, f"is out of range (|value| <= {INT_MAX}), got {show(value)}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                value = float(value)
            except ValueError:
                raise fail(where, f"must be a number, got {show(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(where, f"must be a number, got {show(value)}")
        try:
            value = float(value)
        except OverflowError:
            raise fail(where, "is out of range") from None
        if not math.isfinite(value):
            raise fail(where, f"must be a finite number, got {value}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise fail(where, f"must be a string, got {show(value)}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {where}")


def _from_text(value: Any, hint: Any) -> Any:
    """Comma-split list items arrive as text: '0' becomes 0 for a list of integers."""
    if hint is int and isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return value


def check_bounds(value: Any, meta: Any, where: str) -> None:
    if value is None:
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            check_bounds(v, meta, f"{where}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, lo_x = meta.get("min"), meta.get("min_exclusive")
    hi, hi_x = meta.get("max"), meta.get("max_exclusive")
    if (
        (lo is not None and value < lo)
        or (lo_x is not None and value <= lo_x)
        or (hi is not None and value > hi)
        or (hi_x is not None and value >= hi_x)
    ):
        raise fail(where, f"must be {describe_bounds(meta)}, got {show(value)}")


def describe_bounds(meta: Any) -> str:
    """The bounds in a field's metadata as text, e.g. 'in [0, 1)' or '>= 1'; '' when unbounded."""
    lo = (
        ("[", meta["min"])
        if "min" in meta
        else ("(", meta["min_exclusive"])
        if "min_exclusive" in meta
        else None
    )
    hi = (
        ("]", meta["max"])
        if "max" in meta
        else (")", meta["max_exclusive"])
        if "max_exclusive" in meta
        else None
    )
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def apply_mapping(obj: Any, data: Any, prefix: str = "") -> None:
    if not isinstance(data, dict):
        where = clip(prefix.rstrip(".") or "<root>", 80)
        raise UserError(f"config section '{where}' must be a mapping, got {show(data)}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = type_hints(obj)
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in fields:
            raise UserError(
                clip(f"unknown config key '{clip(where, 80)}'{_suggest(str(key), list(fields))}")
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, prefix=f"{where}.")
        else:
            checked = check_type(value, hints[key], where)
            check_bounds(checked, fields[key].metadata, where)
            setattr(obj, key, checked)


def check_section(obj: Any, prefix: str) -> None:
    hints = type_hints(obj)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_section(value, f"{prefix}{f.name}.")
        else:
            where = f"{prefix}{f.name}"
            check_bounds(check_type(value, hints[f.name], where), f.metadata, where)


_UNITS = {"h": 3600.0, "m": 60.0, "min": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|min|m|s)")


def parse_duration(value) -> float:
    """Seconds in ``value``: '20m', '90s', '1h', '1h30m', '1.5h' or a number (of minutes)."""
    bad = UserError(
        f"train.time_budget must be a duration such as '20m', '90s', '1h', '1h30m' or a number "
        f"of minutes; got {value!r}"
    )
    if isinstance(value, bool):
        raise bad
    if isinstance(value, (int, float)):
        seconds = float(value) * 60.0
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text) * 60.0
        except ValueError:
            parts = _DURATION.findall(text)
            units = [u for _, u in parts]
            if (
                not parts
                or "".join(n + u for n, u in parts) != text
                or len(set(units)) < len(units)
            ):
                raise bad from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise bad
    if not math.isfinite(seconds) or seconds <= 0:
        raise bad
    return seconds
