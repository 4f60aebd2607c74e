"""Local data files: what a cell means, duplicate columns, and which row an error names."""

import json
from pathlib import Path

import pytest

from agnews_lora.data import read_table
from agnews_lora.errors import UserError

NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _error(path: Path, **kw) -> str:
    with pytest.raises(UserError) as err:
        read_table(path, NAMES, **kw)
    message = str(err.value)
    assert "\n" not in message and len(message) < 500, message
    return message


def test_numbers_and_na_are_texts_in_csv(tmp_path):
    path = _write(
        tmp_path / "d.csv", "text,label\n123,1\nN/A,2\nnull,0\nNone,3\n007,1\n1.50,Sports\n"
    )
    table = read_table(path, NAMES)
    assert table.texts == ["123", "N/A", "null", "None", "007", "1.50"]
    assert list(table.labels) == [1, 2, 0, 3, 1, 1]


def test_numbers_are_texts_in_json_and_null_is_missing(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": 123, "label": 1}\n{"text": 1.5, "label": 2.0}\n')
    table = read_table(path, NAMES)
    assert table.texts == ["123", "1.5"] and list(table.labels) == [1, 2]
    path = _write(tmp_path / "n.jsonl", '{"text": "a", "label": 1}\n{"text": null, "label": 2}\n')
    assert "1 row(s) have an empty or missing text (first at row 2;" in _error(path)
    path = _write(tmp_path / "l.jsonl", '{"text": "a", "label": 1}\n{"text": ["x"], "label": 2}\n')
    assert "row 2 has a text that is a list, not a string" in _error(path)


def test_only_empty_or_whitespace_text_is_empty_and_the_row_is_named(tmp_path):
    # data rows: 1 'a', 2 'b', (blank line skipped), 3 '   ', 4 ''
    path = _write(tmp_path / "d.csv", 'text,label\na,1\nb,1\n\n"   ",2\n"",3\n')
    message = _error(path)
    assert "2 row(s) have an empty or missing text (first at row 3;" in message
    assert "numbered from 1" in message


def test_label_errors_name_the_data_row_from_1(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,1\nb,Weather\n")
    assert "row 2 has label 'Weather'" in _error(path)
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 9}\n')
    assert "row 1 has label 9, outside the label set" in _error(path)
    path = _write(tmp_path / "f.jsonl", '{"text": "a", "label": 1.5}\n')
    assert "row 1 has label 1.5" in _error(path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("d.csv", "text,label,text\na,1,b\n"),
        ("d.tsv", "label\ttext\tlabel\na\t1\t2\n"),
    ],
)
def test_duplicate_columns_are_refused(tmp_path, name, content):
    message = _error(_write(tmp_path / name, content))
    assert "appears more than once in the header" in message


def test_duplicate_parquet_columns_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.Table.from_arrays(
            [pa.array(["a"]), pa.array([1]), pa.array(["b"])], names=["text", "label", "text"]
        ),
        path,
    )
    assert "column 'text' appears more than once" in _error(path)


def test_duplicate_json_keys_name_the_line(tmp_path):
    path = _write(
        tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1, "label": 2}\n'
    )
    assert "line 2: key 'label' appears twice" in _error(path)


def test_ragged_csv_rows_are_refused_with_their_row(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,1\nb,2,extra\n")
    assert "row 2 has 3 field(s) but the header has 2" in _error(path)


def test_json_array_columns_and_parquet_are_read(tmp_path):
    rows = [{"text": "a", "label": "World"}, {"text": "b", "label": 3}]
    assert read_table(_write(tmp_path / "a.json", json.dumps(rows)), NAMES).texts == ["a", "b"]
    cols = {"text": ["a", "b"], "label": [0, 1]}
    assert list(read_table(_write(tmp_path / "c.json", json.dumps(cols)), NAMES).labels) == [0, 1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"], "label": [2, 3]}), tmp_path / "p.parquet")
    assert read_table(tmp_path / "p.parquet", NAMES).texts == ["x", "y"]


def test_bom_header_and_quoted_newlines_in_csv(tmp_path):
    path = _write(tmp_path / "d.csv", b'\xef\xbb\xbftext,label\n"two\nlines",1\nb,2\n')
    table = read_table(path, NAMES)
    assert table.texts == ["two\nlines", "b"] and list(table.labels) == [1, 2]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("d.jsonl", '{"text": NaN, "label": 1}\n', "NaN is not valid JSON"),
        ("d.jsonl", "[" * 100_000 + "\n", "nested too deeply"),
        ("d.jsonl", "5\n", "row 1 is 5, not a JSON object"),
        ("d.csv", "text,label\n", "has no rows"),
        ("d.csv", "\n\n", "has no rows"),
        ("d.parquet", "not parquet", "could not read"),
        (
            "d.jsonl",
            '{"text": "\\ud800 x", "label": 1}\n',
            "row 1 has a text that is not valid Unicode",
        ),
        (
            "d.tsv",
            'text\tlabel\n"a\t1\n',
            "row 1 has 1 field(s) but the header has 2; quote texts that contain a tab",
        ),
    ],
)
def test_malformed_files_are_one_line(tmp_path, name, content, message):
    assert message in _error(_write(tmp_path / name, content))


def test_pickled_columns_are_still_read_when_trusted(tmp_path):
    import pickle

    path = tmp_path / "d.pkl"
    path.write_bytes(pickle.dumps({"text": ["a", "b"]}))
    assert read_table(path, NAMES, require_labels=False, trust_pickle=True).texts == ["a", "b"]
    path.write_bytes(pickle.dumps({"text": 5}))
    assert "cannot read columns" in _error(path, require_labels=False, trust_pickle=True)
