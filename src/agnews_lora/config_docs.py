"""Config docs from one source: the dataclasses in :mod:`.config` (help, type, bounds, default).

Generated from them:

* every shipped ``configs/*.yaml`` (not ``configs/sweeps/``): each key with its help as a comment
  line above it; the file keeps its own header comment, its own values and its own end-of-line
  notes (``val_size: 1280.0  # seed: 1,280 rows``);
* the README's configuration reference table, between ``<!-- config-table:start -->`` and
  ``<!-- config-table:end -->``.

``python -m agnews_lora.config_docs --check`` lists what drifted (exit 1);
``--write`` regenerates it.  ``tests/test_config_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Config, config_from_dict, field_help
from .config_check import describe_bounds, type_hints
from .safe_yaml import parse_yaml

START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"
WIDTH = 100
_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")


def config_files(root: Path) -> list[Path]:
    """The shipped configs whose key comments are generated (sweep files are not configs)."""
    return sorted((root / "configs").glob("*.yaml"))


def fields(cfg: Config | None = None) -> list[tuple[str, str | None, Any, Any, Any]]:
    """(dotted key, section or None, dataclass field, type hint, value) for every config key."""
    cfg = cfg or Config()
    out = []
    for top in dataclasses.fields(cfg):
        value = getattr(cfg, top.name)
        if dataclasses.is_dataclass(value):
            hints = type_hints(value)
            for f in dataclasses.fields(value):
                out.append(
                    (f"{top.name}.{f.name}", top.name, f, hints[f.name], getattr(value, f.name))
                )
        else:
            out.append((top.name, None, top, type_hints(cfg)[top.name], value))
    return out


def _strip_none(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None was allowed); `str | float | None` -> `str | float`."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), True  # noqa: UP007
    return hint, False


def _one_type(base: Any) -> str:
    if typing.get_origin(base) is Literal:
        return "str"
    if typing.get_origin(base) is list:
        return f"list[{typing.get_args(base)[0].__name__}]"
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return " or ".join(_one_type(a) for a in typing.get_args(base))
    return base.__name__


def type_text(hint: Any) -> str:
    """'int', 'list[str] or null', 'str or float or null' (a Literal is a str whose values
    `allowed` lists)."""
    base, nullable = _strip_none(hint)
    text = _one_type(base)
    return f"{text} or null" if nullable else text


def allowed_text(hint: Any, meta: Any) -> str:
    """The values a key accepts beyond its type: Literal choices or bounds ('' if any)."""
    base, _ = _strip_none(hint)
    if typing.get_origin(base) is Literal:
        return ", ".join(typing.get_args(base))
    bounds = describe_bounds(meta)
    if bounds and typing.get_origin(base) is list:
        return f"each {bounds}"
    return bounds


def yaml_value(value: Any) -> str:
    """A value as one line of YAML (flow style), as the shipped configs write it."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def comment(key: str, f: Any, hint: Any) -> str:
    """The comment text of a key in the shipped YAML: its help, then what it allows."""
    section_help = field_help_of(key, f)
    allowed = allowed_text(hint, f.metadata).replace(" ", "\0")  # wrapped as one word
    return f"{section_help} Allowed:\0{allowed}." if allowed else section_help


def field_help_of(key: str, f: Any) -> str:
    section = key.split(".")[0]
    owner = getattr(Config(), section) if "." in key else Config()
    return field_help(owner)[f.name]


# ---------------------------------------------------------------------------------------------
# YAML


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines).strip("\n")


def _notes(text: str) -> dict[str, str]:
    """End-of-line comments after key values, by dotted key (values here never hold ' #')."""
    notes, section = {}, None
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if not m:
            continue
        indent, key, rest = m.groups()
        value, _, note = rest.partition(" #")
        if not indent:
            section = key if not value.strip() else None
            path = key
        else:
            path = f"{section}.{key}"
        if note.strip():
            notes[path] = note.strip()
    return notes


def render_yaml(text: str, what: str = "config") -> str:
    """``text`` (a shipped config) re-rendered: its header, values and notes; generated comments."""
    data = parse_yaml(text, what)
    cfg = config_from_dict({} if data is None else data)
    notes = _notes(text)
    out = [_header(text), ""] if _header(text) else []
    last_section = None
    for key, section, f, hint, value in fields(cfg):
        if section != last_section:
            if out and out[-1] != "":
                out.append("")
            if section is not None:
                out.append(f"{section}:")
            last_section = section
        indent = "  " if section else ""
        wrap = textwrap.wrap(comment(key, f, hint), WIDTH - len(indent) - 2, break_on_hyphens=False)
        out += [f"{indent}# {line}".replace("\0", " ") for line in wrap]
        note = f"  # {notes[key]}" if key in notes else ""
        out.append(f"{indent}{f.name}: {yaml_value(value)}{note}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# README


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    """The README's configuration reference: every key, its type, default, allowed values, help."""
    rows = [
        "<!-- generated from src/agnews_lora/config.py by `python -m agnews_lora.config_docs "
        "--write`; edit the dataclass help there, not this table -->",
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for key, _, f, hint, value in fields():
        allowed = allowed_text(hint, f.metadata)
        rows.append(
            f"| `{key}` | {_cell(type_text(hint))} | `{_cell(yaml_value(value))}` | "
            f"{_cell(allowed)} | {_cell(field_help_of(key, f))} |"
        )
    return "\n".join(rows)


def render_readme(text: str) -> str:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs exactly one {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{render_table()}\n{END}{tail}"


# ---------------------------------------------------------------------------------------------
# check / write


def rendered(root: Path) -> dict[Path, tuple[str, str]]:
    """path -> (current text, generated text) for every generated file under ``root``."""
    out = {}
    for path in config_files(root):
        text = path.read_text(encoding="utf-8")
        out[path] = (text, render_yaml(text, f"'{path}'"))
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    out[readme] = (text, render_readme(text))
    return out


def drifted(root: Path) -> list[Path]:
    """Files whose text differs from what the dataclasses generate."""
    return [p for p, (now, want) in rendered(root).items() if now != want]


def write(root: Path) -> list[Path]:
    changed = []
    for path, (now, want) in rendered(root).items():
        if now != want:
            path.write_text(want, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agnews_lora.config_docs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if a generated file drifted")
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: .)")
    args = ap.parse_args(argv)
    if args.write:
        for path in write(args.root):
            print(f"wrote {path}")
        return 0
    stale = drifted(args.root)
    for path in stale:
        print(
            f"{path} drifted from src/agnews_lora/config.py; "
            "run `python -m agnews_lora.config_docs --write`",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
