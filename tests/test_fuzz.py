"""Fuzzing the config loader and the data readers: every input either loads or is a UserError whose
message is one line of at most 500 characters; nothing else may escape (issue 14)."""

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agnews_lora import config_docs
from agnews_lora.config import Config, apply_overrides, load_config
from agnews_lora.data import read_table
from agnews_lora.errors import UserError

# AGNEWS_FUZZ_EXAMPLES=2000 for a longer hunt; the default keeps the module at a few seconds
FAST = settings(
    max_examples=int(os.environ.get("AGNEWS_FUZZ_EXAMPLES", "60")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEYS = [key for key, *_ in config_docs.fields()]
SECTIONS = sorted({k.split(".")[0] for k in KEYS})
NAMES = ["World", "Sports", "Business", "Sci/Tech"]
_DIR = Path(tempfile.mkdtemp(prefix="agnews-fuzz-"))

scalars = st.one_of(
    st.sampled_from(
        [
            "null",
            "~",
            "true",
            "no",
            ".nan",
            "-.inf",
            "1e999",
            "0x1F",
            "0o17",
            "1:30",
            "2001-02-30",
            "!!binary aGk=",
            "!!python/object:os.system {}",
            "&a x",
            "*a",
            "<<: {r: 1}",
            "'quoted'",
            '"\\u00e9"',
            "[",
            "{",
            "-",
            "? x",
            "|\n  block",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(KEYS + ["r", "x", "<<"]), inner, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(KEYS + SECTIONS), st.text(max_size=10))


def _one_line_or_ok(fn) -> None:
    try:
        fn()
    except UserError as e:
        message = str(e)
        assert "\n" not in message and len(message) <= 500, message


@st.composite
def yaml_documents(draw) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        section = draw(st.sampled_from(SECTIONS + ["x", "output_dir"]))
        if draw(st.booleans()):
            lines.append(f"{section}: {draw(values)}")
        else:
            lines.append(f"{section}:")
            for _ in range(draw(st.integers(1, 3))):
                key = draw(keys).split(".")[-1]
                lines.append(f"  {key}: {draw(values)}")
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\n---\nx: 1\n", "\t", "\x00"]))


@FAST
@given(st.one_of(yaml_documents(), st.text(max_size=200)))
def test_random_yaml_files_load_or_fail_in_one_line(text):
    path = _DIR / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _one_line_or_ok(lambda: load_config(path))


@FAST
@given(
    st.lists(
        st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=40)),
        max_size=3,
    )
)
def test_random_set_strings_apply_or_fail_in_one_line(items):
    _one_line_or_ok(lambda: apply_overrides(Config(), items))


cells = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "N/A",
            "null",
            "123",
            "1.5",
            "World",
            "Sci/Tech",
            "7",
            "-1",
            '"',
            '""',
            ",",
            "\t",
            "\n",
            "a\nb",
            "\x00",
        ]
    ),
    st.text(max_size=8),
)


@st.composite
def csv_bytes(draw) -> bytes:
    header = draw(
        st.lists(
            st.sampled_from(["text", "label", "title", "description", "x", ""]),
            min_size=1,
            max_size=4,
        )
    )
    rows = [header] + draw(st.lists(st.lists(cells, max_size=5), max_size=6))
    sep = draw(st.sampled_from([",", "\t"]))
    return "\n".join(sep.join(row) for row in rows).encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), cells),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["text", "label", "title"]), inner, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def jsonl_bytes(draw) -> bytes:
    records = draw(st.lists(json_values, max_size=6))
    lines = [json.dumps(r) for r in records]
    if lines and draw(st.booleans()):  # damage one line
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines).encode()


@FAST
@given(
    st.one_of(
        csv_bytes().map(lambda b: (".csv", b)),
        jsonl_bytes().map(lambda b: (".jsonl", b)),
        st.tuples(
            st.sampled_from([".csv", ".tsv", ".jsonl", ".json", ".parquet"]),
            st.binary(max_size=200),
        ),
    ),
    st.booleans(),
)
def test_random_data_files_read_or_fail_in_one_line(file, require_labels):
    suffix, content = file
    path = _DIR / f"fuzz{suffix}"
    path.write_bytes(content)
    _one_line_or_ok(lambda: read_table(path, NAMES, require_labels=require_labels))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    import shutil

    shutil.rmtree(_DIR, ignore_errors=True)
