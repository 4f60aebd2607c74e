"""Loading AG News (Hub or local files), validating it, splitting it, tokenising it once.

Every table is normalised to two columns: ``text`` (str) and ``label`` (int id into
``data.label_names``).  Files may instead carry ``title`` + ``description`` (joined by a
space, as on the Hub) and named labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import UserError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".pkl": "pickle", ".pickle": "pickle"}


@dataclass
class Table:
    """A validated split: texts and (optionally) integer labels."""

    texts: list[str]
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray, name: str | None = None) -> "Table":
        labels = self.labels[idx] if self.labels is not None else None
        return Table([self.texts[i] for i in idx], labels, name or self.name)


# ---------------------------------------------------------------------------------------------
# reading


def _check_utf8(path: Path) -> None:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"'{path}' is not UTF-8 text (first bad byte on line {lineno}); re-save it as UTF-8") from None


def read_columns(path: str | Path, trust_pickle: bool = False) -> dict[str, list]:
    """Read a CSV / TSV / JSON(L) / Parquet file (or, if trusted, a pickled ``datasets.Dataset``)."""
    import datasets

    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file '{path}' not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"data file '{path}': unsupported extension '{path.suffix}' (use .csv, .tsv, .jsonl, .json, .parquet or .pkl)")
    if fmt == "pickle":
        return _read_pickle(path, trust_pickle)
    if fmt in ("csv", "json"):
        _check_utf8(path)
    if path.stat().st_size == 0:
        raise UserError(f"data file '{path}' is empty")
    kwargs = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # datasets wraps parser errors in several types
        cause = e.__cause__ or e
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UserError(f"could not read '{path}' as {fmt}: {reason[:200]}") from None
    return ds.to_dict()


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
        raise UserError(f"could not unpickle '{path}': {type(e).__name__}: {str(e)[:160]}") from None
    if hasattr(obj, "to_dict") and hasattr(obj, "column_names"):  # datasets.Dataset
        return obj.to_dict()
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # pandas.DataFrame
        return {c: obj[c].tolist() for c in obj.columns}
    if isinstance(obj, dict):
        return {k: list(v) for k, v in obj.items()}
    raise UserError(f"'{path}' holds a {type(obj).__name__}; expected a datasets.Dataset, a DataFrame or a dict of columns")


# ---------------------------------------------------------------------------------------------
# validation


def _texts(cols: dict[str, list], where: str) -> list[str]:
    if "text" in cols:
        texts = cols["text"]
    elif "title" in cols and "description" in cols:
        texts = [f"{t or ''} {d or ''}".strip() for t, d in zip(cols["title"], cols["description"])]
    else:
        raise UserError(f"{where} has no 'text' column (nor 'title' + 'description'); columns found: {', '.join(cols) or 'none'}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise UserError(f"{where}: {len(bad)} row(s) have an empty or missing text (first at row {bad[0]}); remove or fill them")
    return list(texts)


def _labels(values: list, names: list[str], where: str) -> np.ndarray:
    lookup = {str(n).lower(): i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            idx = int(v)
        elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
            idx = int(v.strip())
        elif isinstance(v, str) and v.strip().lower() in lookup:
            idx = lookup[v.strip().lower()]
        else:
            raise UserError(f"{where}: row {i} has label {v!r}, which is not one of {names} nor an id 0..{len(names) - 1}")
        if not 0 <= idx < len(names):
            raise UserError(f"{where}: row {i} has label {idx}, outside the label set 0..{len(names) - 1} ({', '.join(names)})")
        out[i] = idx
    return out


def to_table(cols: dict[str, list], names: list[str], where: str, require_labels: bool) -> Table:
    if not cols or not next(iter(cols.values()), None):
        raise UserError(f"{where} has no rows")
    texts = _texts(cols, where)
    if "label" in cols:
        labels = _labels(cols["label"], [str(n) for n in names], where)
    elif require_labels:
        raise UserError(f"{where} has no 'label' column; columns found: {', '.join(cols)}")
    else:
        labels = None
    return Table(texts, labels, where)


def read_table(path: str | Path, names: list[str], require_labels: bool = True, trust_pickle: bool = False) -> Table:
    return to_table(read_columns(path, trust_pickle), names, f"'{path}'", require_labels)


# ---------------------------------------------------------------------------------------------
# splits


def stratified_split(table: Table, size: float, seed: int, names: tuple[str, str]) -> tuple[Table, Table]:
    """Seeded stratified split; ``size`` < 1 is a fraction, >= 1 a row count."""
    from sklearn.model_selection import train_test_split

    n = len(table)
    count = int(round(size * n)) if size < 1 else int(size)
    n_classes = len(np.unique(table.labels))
    if count < n_classes or n - count < n_classes:
        raise UserError(f"cannot carve {count} of {n} rows for '{names[1]}' with {n_classes} classes; adjust the split size")
    idx = np.arange(n)
    try:
        keep, held = train_test_split(idx, test_size=count, random_state=seed, stratify=table.labels)
    except ValueError:  # a class too small to stratify
        keep, held = train_test_split(idx, test_size=count, random_state=seed)
    return table.subset(np.sort(keep), names[0]), table.subset(np.sort(held), names[1])


def _hub_dataset(cfg: Config):
    import datasets

    try:
        return datasets.load_dataset(cfg.data.dataset)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"could not load dataset '{cfg.data.dataset}' from the Hugging Face Hub ({reason[:160]}); "
            "set data.train_file to a local file or use --config configs/offline-minilm.yaml"
        ) from None


def _hub_table(split, names: list[str], name: str) -> Table:
    return to_table(split.to_dict(), names, f"{name} split", require_labels=True)


def _local_train_and_test(cfg: Config) -> tuple[Table, Table | None]:
    d = cfg.data
    full = read_table(d.train_file, d.label_names)
    if d.test_file:
        return full, read_table(d.test_file, d.label_names)
    if d.test_size > 0:
        return stratified_split(full, d.test_size, d.split_seed, ("train", "test"))
    return full, None


def load_splits(cfg: Config) -> dict[str, Table]:
    """train + validation (carved from train, stratified and seeded).  The test split is not loaded."""
    d = cfg.data
    if d.train_file:
        train, _ = _local_train_and_test(cfg)
    else:
        train = _hub_table(_hub_dataset(cfg)["train"], d.label_names, "train")
    train, val = stratified_split(train, d.val_size, d.split_seed, ("train", "validation"))
    if d.max_train_samples is not None and d.max_train_samples < len(train):
        rng = np.random.default_rng(d.split_seed)
        train = train.subset(np.sort(rng.choice(len(train), d.max_train_samples, replace=False)))
    return {"train": train, "validation": val}


def load_test_split(cfg: Config, data_file: str | None = None, trust_pickle: bool = False) -> Table:
    """The split `evaluate` scores: --data FILE, the run's test file/carved rows, or the Hub test split."""
    d = cfg.data
    if data_file:
        table = read_table(data_file, d.label_names, require_labels=True, trust_pickle=trust_pickle)
        table.name = Path(data_file).stem
        return table
    if d.train_file:
        _, test = _local_train_and_test(cfg)
        if test is None:
            raise UserError("this run trained on a local file without data.test_file or data.test_size: pass --data FILE to evaluate")
        test.name = "test"
        return test
    table = _hub_table(_hub_dataset(cfg)["test"], d.label_names, "test")
    table.name = "test"
    return table


# ---------------------------------------------------------------------------------------------
# tokenisation (cached)


@dataclass
class Encoded:
    ids: list[np.ndarray]  # one int32 array per text, special tokens included, no padding
    labels: np.ndarray | None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # runtime state that the last call left behind, not the tokenizer
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(table: Table, tokenizer, max_length: int, cache_dir: str | None = None) -> Encoded:
    """Tokenise once; with ``cache_dir`` a second call with the same texts and tokenizer reads the cache."""
    key = None
    if cache_dir:
        h = hashlib.sha256()
        h.update(_tokenizer_fingerprint(tokenizer).encode())
        h.update(str(max_length).encode())
        for t in table.texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        key = Path(cache_dir) / f"tokens-{h.hexdigest()[:24]}.npz"
        if key.is_file():
            try:
                with np.load(key) as z:
                    flat, offsets = z["flat"], z["offsets"]
                ids = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
                if len(ids) == len(table):
                    log.debug("tokenised %s from cache %s", table.name, key)
                    return Encoded(ids, table.labels)
            except Exception:  # a damaged cache file is simply rebuilt
                pass
    enc = tokenizer(table.texts, truncation=True, max_length=max_length)["input_ids"]
    ids = [np.asarray(x, dtype=np.int32) for x in enc]
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in ids])
        tmp = key.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, flat=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
        os.replace(tmp, key)
    return Encoded(ids, table.labels)
