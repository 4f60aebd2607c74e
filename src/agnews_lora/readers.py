"""Reading local data files into columns: CSV / TSV / JSON(L) / Parquet, and trusted pickles.

CSV and JSON are parsed with the standard library, so every cell keeps what the file says:
``123`` and ``N/A`` in a CSV are the texts "123" and "N/A" (no guessing of numbers or missing
values), and a duplicate column name is an error.  A syntax error names the line of the file;
an error about a row's content names the data row (numbered from 1, a CSV header and blank lines
not counted).  Every failure is a one-line UserError.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path
from typing import Any

from .errors import UserError
from .safe_yaml import clip, show

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".pkl": "pickle",
    ".pickle": "pickle",
}
MAX_FIELD_CHARS = 1 << 24  # one CSV cell; the csv module's default (128 KiB) is too small for docs


def read_columns(path: str | Path, trust_pickle: bool = False) -> dict[str, list]:
    """Read a CSV / TSV / JSON(L) / Parquet file (or, if trusted, a pickled ``Dataset``)."""
    path = Path(path)
    name = clip(str(path), 160)
    if not path.is_file():
        raise UserError(f"data file '{name}' not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"data file '{name}': unsupported extension '{clip(path.suffix, 20)}' "
            "(use .csv, .tsv, .jsonl, .json, .parquet or .pkl)"
        )
    if fmt == "pickle":
        return _read_pickle(path, trust_pickle)
    try:
        if path.stat().st_size == 0:
            raise UserError(f"data file '{name}' is empty")
        if fmt == "parquet":
            return _read_parquet(path, name)
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"data file '{name}' cannot be read ({e.strerror or type(e).__name__})"
        ) from None
    text = _utf8(raw, name)
    if fmt == "csv":
        return _read_csv(text, name, "\t" if path.suffix.lower() == ".tsv" else ",")
    return _read_json(text, name)


def _utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"'{name}' is not UTF-8 text (first bad byte on line {line}); re-save it as UTF-8"
        ) from None


def _unique(header: list[str], name: str) -> None:
    seen = set()
    for col in header:
        if col in seen:
            raise UserError(
                f"'{name}': column {show(col)} appears more than once in the header; "
                "rename or remove the duplicate"
            )
        seen.add(col)


def _read_csv(text: str, name: str, delimiter: str) -> dict[str, list]:
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    sep = "a tab" if delimiter == "\t" else f"'{delimiter}'"
    header: list[str] | None = None
    cols: dict[str, list] = {}
    row_no = 0
    try:
        for row in reader:
            if not row:  # a blank line
                continue
            if header is None:
                header = [c.strip() for c in row]
                _unique(header, name)
                cols = {c: [] for c in header}
                continue
            row_no += 1
            if len(row) != len(header):
                raise UserError(
                    f"'{name}': row {row_no} has {len(row)} field(s) but the header has "
                    f"{len(header)}; quote texts that contain {sep}"
                )
            for col, value in zip(header, row):
                cols[col].append(value)
    except csv.Error as e:
        raise UserError(
            clip(f"could not read '{name}' as csv: line {reader.line_num}: {e}")
        ) from None
    return cols


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {show(key)} appears twice in one object")
        out[key] = value
    return out


def _loads(text: str, name: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except RecursionError:
        raise UserError(f"'{name}': {where} is nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise UserError(clip(f"could not read '{name}' as json: {where}: {e}")) from None


def _read_json(text: str, name: str) -> dict[str, list]:
    """A JSON array of objects, an object of columns, or JSON lines (one object per line)."""
    try:
        whole = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        whole = None
        records = [
            _loads(line, name, f"line {i}")
            for i, line in enumerate(text.splitlines(), 1)
            if line.strip()
        ]
    else:
        if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
            lengths = {len(v) for v in whole.values()}
            if len(lengths) != 1:
                raise UserError(f"'{name}': its columns have different lengths")
            return {str(k): v for k, v in whole.items()}
        records = whole if isinstance(whole, list) else [whole]
    cols: dict[str, list] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise UserError(f"'{name}': row {i + 1} is {show(rec)}, not a JSON object")
        for key in rec:
            if key not in cols:
                cols[key] = [None] * i
        for key, column in cols.items():
            column.append(rec.get(key))
    return cols


def _read_parquet(path: Path, name: str) -> dict[str, list]:
    import pyarrow.parquet as pq

    try:
        _unique(pq.read_schema(path).names, name)
        return pq.read_table(path).to_pydict()
    except UserError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(clip(f"could not read '{name}' as parquet: {reason}")) from None


def _read_pickle(path: Path, trust_pickle: bool) -> dict[str, list]:
    if not trust_pickle:
        raise UserError(
            f"'{path}' is a pickle, and loading a pickle can run arbitrary code; "
            "pass --trust-pickle if you trust where it came from"
        )
    try:
        with path.open("rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - the user explicitly trusted this file
    except Exception as e:
        raise UserError(
            f"could not unpickle '{path}': {type(e).__name__}: {str(e)[:160]}"
        ) from None
    try:
        if hasattr(obj, "to_dict") and hasattr(obj, "column_names"):  # datasets.Dataset
            return obj.to_dict()
        if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # pandas.DataFrame
            _unique([str(c) for c in obj.columns], str(path))
            return {str(c): obj[c].tolist() for c in obj.columns}
        if isinstance(obj, dict):
            return {str(k): list(v) for k, v in obj.items()}
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            clip(f"'{path}': cannot read columns from the pickled {type(obj).__name__}: {e}")
        ) from None
    raise UserError(
        f"'{path}' holds a {type(obj).__name__}; expected a datasets.Dataset, "
        "a DataFrame or a dict of columns"
    )
