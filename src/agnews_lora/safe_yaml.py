"""Bounded YAML: the one loader for config files, ``--set`` values and run directories' config.yaml.

``yaml.safe_load`` constructs no objects, but it still expands anchors/aliases (a few hundred bytes
can become gigabytes), recurses once per nesting level, silently keeps the last of two equal keys,
and lets ``int()`` / ``datetime`` errors escape as ``ValueError``.  This loader refuses aliases,
nesting deeper than ``MAX_DEPTH``, texts longer than ``MAX_BYTES`` and duplicate keys (naming the
key and its line), and turns every failure into a one-line :class:`UserError` of bounded length.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

MAX_BYTES = 1 << 20  # a config file is a few KiB
MAX_DEPTH = 32
MAX_MESSAGE = 300

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = _repr.maxset = 6
_repr.maxlevel = 3


def show(value: Any) -> str:
    """A short repr of a user value, fit for a one-line error message."""
    return clip(_repr.repr(value), 80)


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases, with a depth limit and with duplicate keys as errors."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed", problem_mark=mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(
                    problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.MarkedYAMLError(
                        problem="merge keys (<<) are not allowed", problem_mark=key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise yaml.MarkedYAMLError(
                        problem=f"duplicate key {show(key)} (first on line {seen[key]})",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, what: str) -> Any:
    """Parse YAML text (at most ``MAX_BYTES``) with the bounded loader; errors name ``what``."""
    if len(text) > MAX_BYTES:
        raise UserError(f"{what} is longer than {MAX_BYTES} characters; refusing to parse it")
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or type(e).__name__
        if isinstance(e, yaml.reader.ReaderError):
            problem = f"character #x{e.character:04x} at position {e.position}: {problem}"
        raise UserError(clip(f"{what} is not valid YAML{loc}: {problem}")) from None
    except (ValueError, OverflowError) as e:  # int() digit limit, impossible dates
        reason = str(e).split(";")[0]
        raise UserError(clip(f"{what} holds a value YAML cannot represent: {reason}")) from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Read and parse a YAML file of at most ``MAX_BYTES`` bytes; every failure is one line."""
    p = Path(path)
    name = clip(str(p), 160)
    if not p.is_file():
        raise UserError(f"{what} '{name}' not found")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise UserError(
            f"{what} '{name}' cannot be read ({e.strerror or type(e).__name__})"
        ) from None
    if len(raw) > MAX_BYTES:
        raise UserError(f"{what} '{name}' is larger than {MAX_BYTES} bytes; refusing to parse it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} '{name}' is not UTF-8 text") from None
    return parse_yaml(text, f"{what} '{name}'")
