"""Loading AG News (Hub or local files), validating it, splitting it, tokenising it once.

Every table is normalised to two columns: ``text`` (str) and ``label`` (int id into
``data.label_names``).  Files may instead carry ``title`` + ``description`` (joined by a
space, as on the Hub) and named labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config
from .errors import UserError
from .readers import read_columns
from .safe_yaml import clip, show

log = logging.getLogger(__name__)

ROWS = "rows are numbered from 1, not counting a header"


@dataclass
class Table:
    """A validated split: texts and (optionally) integer labels."""

    texts: list[str]
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: np.ndarray, name: str | None = None) -> Table:
        labels = self.labels[idx] if self.labels is not None else None
        return Table([self.texts[i] for i in idx], labels, name or self.name)


# ---------------------------------------------------------------------------------------------
# validation


def _as_text(value) -> str | None:
    """A cell as text: strings as they are, numbers in their string form, missing as None."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _texts(cols: dict[str, list], where: str) -> list[str]:
    """Texts by the rule: a cell that is a string or a number is text (a number in its string
    form); an empty, whitespace-only or missing cell is "empty"; anything else is an error."""
    if "text" in cols:
        parts = [cols["text"]]
    elif "title" in cols and "description" in cols:
        parts = [cols["title"], cols["description"]]
    else:
        raise UserError(
            f"{where} has no 'text' column (nor 'title' + 'description'); "
            f"columns found: {clip(', '.join(map(str, cols)) or 'none', 200)}"
        )
    texts, bad = [], []
    for i, cells in enumerate(zip(*parts)):
        try:
            pieces = [_as_text(c) for c in cells]
        except TypeError as e:
            raise UserError(
                f"{where}: row {i + 1} has a text that is a {e}, not a string ({ROWS})"
            ) from None
        text = (
            " ".join(p for p in pieces if p is not None).strip() if len(pieces) > 1 else pieces[0]
        )
        if text is None or not text.strip():
            bad.append(i)
        elif not _encodable(text):
            raise UserError(
                f"{where}: row {i + 1} has a text that is not valid Unicode (a lone "
                f"surrogate such as \\ud800 in JSON; {ROWS})"
            )
        texts.append(text)
    if bad:
        raise UserError(
            f"{where}: {len(bad)} row(s) have an empty or missing text (first at row "
            f"{bad[0] + 1}; {ROWS}); remove or fill them"
        )
    return texts


def _labels(values: list, names: list[str], where: str) -> np.ndarray:
    lookup = {str(n).lower(): i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            idx = int(v)
        elif isinstance(v, str) and v.strip().lstrip("+-").isdigit() and len(v) < 20:
            idx = int(v.strip())
        elif isinstance(v, str) and v.strip().lower() in lookup:
            idx = lookup[v.strip().lower()]
        else:
            raise UserError(
                f"{where}: row {i + 1} has label {show(v)}, which is not one of "
                f"{names} nor an id 0..{len(names) - 1} ({ROWS})"
            )
        if not 0 <= idx < len(names):
            raise UserError(
                f"{where}: row {i + 1} has label {idx}, outside the label set "
                f"0..{len(names) - 1} ({', '.join(names)}; {ROWS})"
            )
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


def read_table(
    path: str | Path, names: list[str], require_labels: bool = True, trust_pickle: bool = False
) -> Table:
    return to_table(read_columns(path, trust_pickle), names, f"'{path}'", require_labels)


# ---------------------------------------------------------------------------------------------
# splits


def stratified_split(
    table: Table, size: float, seed: int, names: tuple[str, str]
) -> tuple[Table, Table]:
    """Seeded stratified split; ``size`` < 1 is a fraction, >= 1 a row count."""
    from sklearn.model_selection import train_test_split

    n = len(table)
    count = int(round(size * n)) if size < 1 else int(size)
    n_classes = len(np.unique(table.labels))
    if count < n_classes or n - count < n_classes:
        raise UserError(
            f"cannot carve {count} of {n} rows for '{names[1]}' with {n_classes} classes; "
            "adjust the split size"
        )
    idx = np.arange(n)
    try:
        keep, held = train_test_split(
            idx, test_size=count, random_state=seed, stratify=table.labels
        )
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
            f"could not load dataset '{cfg.data.dataset}' from the Hugging Face Hub "
            f"({reason[:160]}); "
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
    """train + validation (carved from train, stratified and seeded). Test split not loaded."""
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
    """The split `evaluate` scores: --data FILE, the run's test file or carved rows, or the Hub
    test split."""
    d = cfg.data
    if data_file:
        table = read_table(data_file, d.label_names, require_labels=True, trust_pickle=trust_pickle)
        table.name = Path(data_file).stem
        return table
    if d.train_file:
        _, test = _local_train_and_test(cfg)
        if test is None:
            raise UserError(
                "this run trained on a local file without data.test_file or data.test_size: "
                "pass --data FILE to evaluate"
            )
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
    rows_sha256: str | None = None  # `rows_fingerprint` of the table it was encoded from

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def rows_fingerprint(table: Table) -> str:
    """sha256 of a split's texts and labels, in order: names exactly the rows a run saw (two splits
    with the same number of rows but one edited text differ)."""
    h = hashlib.sha256()
    for t in table.texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    if table.labels is not None:
        h.update(np.ascontiguousarray(table.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop(
            "truncation", None
        )  # runtime state that the last call left behind, not the tokenizer
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True)
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def encode(table: Table, tokenizer, max_length: int, cache_dir: str | None = None) -> Encoded:
    """Tokenise once; with ``cache_dir``, a later call with the same texts and tokenizer reads
    the cache."""
    key, rows = None, rows_fingerprint(table)
    if cache_dir:
        h = hashlib.sha256()
        h.update(_tokenizer_fingerprint(tokenizer).encode())
        h.update(str(max_length).encode())
        h.update(rows.encode())
        key = Path(cache_dir) / f"tokens-{h.hexdigest()[:24]}.npz"
        if key.is_file():
            try:
                with np.load(key) as z:
                    flat, offsets = z["flat"], z["offsets"]
                ids = [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
                if len(ids) == len(table):
                    log.debug("tokenised %s from cache %s", table.name, key)
                    return Encoded(ids, table.labels, rows)
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
    return Encoded(ids, table.labels, rows)


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[Encoded, list[bool]]:
    """Tokenise, truncating to ``max_length`` (keeping the final special token); flags truncated texts."""
    enc = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    ids, truncated = [], []
    for x in enc:
        cut = len(x) > max_length
        if cut:
            x = x[: max_length - 1] + x[-1:]
        ids.append(np.asarray(x, dtype=np.int32))
        truncated.append(cut)
    return Encoded(ids, None), truncated
