"""The shipped configs' key comments and the README table are generated from the dataclasses."""

import shutil
from pathlib import Path

import pytest

from agnews_lora import config_docs
from agnews_lora.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _copy_project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_shipped_configs_and_readme_table_match_the_dataclasses():
    stale = config_docs.drifted(ROOT)
    assert not stale, f"run `python -m agnews_lora.config_docs --write`: {stale} drifted"


def test_sweep_files_are_not_treated_as_configs():
    assert all(p.parent.name == "configs" for p in config_docs.config_files(ROOT))


@pytest.mark.parametrize("edit", ["comment", "readme", "missing key"])
def test_a_hand_edit_is_detected_and_write_repairs_it(tmp_path, edit, capsys):
    root = _copy_project(tmp_path)
    target = root / ("README.md" if edit == "readme" else "configs/default.yaml")
    text = target.read_text()
    if edit == "comment":
        text = text.replace("# LoRA rank.", "# LoRA rank (hand-edited).")
    elif edit == "readme":
        text = text.replace("| LoRA rank. |", "| Rank. |")
    else:
        text = text.replace("  r: 8\n", "")
    assert text != target.read_text()
    target.write_text(text)
    assert config_docs.drifted(root) == [target]
    assert config_docs.main(["--check", "--root", str(root)]) == 1
    assert "config_docs --write" in capsys.readouterr().err
    assert config_docs.main(["--write", "--root", str(root)]) == 0
    assert config_docs.drifted(root) == []
    assert target.read_text() == (ROOT / target.relative_to(root)).read_text()


def test_rendering_keeps_header_values_and_notes():
    src = (
        "# my header\n# line 2\n\nlora:\n  r: 4  # as in the paper\ntrain:\n  learning_rate: 2e-5\n"
    )
    out = config_docs.render_yaml(src)
    assert out.startswith("# my header\n# line 2\n\nmodel:\n")
    assert "  r: 4  # as in the paper\n" in out and "  learning_rate: 2.0e-05\n" in out
    assert config_docs.render_yaml(out) == out  # idempotent
    lines = out.splitlines()
    assert max(map(len, lines[3:])) <= config_docs.WIDTH
    # every key line is preceded by its generated comment, which names its choices or bounds
    assert "  # Learning-rate schedule after warmup. Allowed: linear, cosine, constant." in lines
    assert "  # LoRA rank. Allowed: >= 1." in lines


@pytest.mark.parametrize("path", config_docs.config_files(ROOT), ids=lambda p: p.stem)
def test_rendered_config_loads_to_the_same_values(path, tmp_path):
    out = tmp_path / path.name
    out.write_text(config_docs.render_yaml(path.read_text()))
    assert load_config(out) == load_config(path)


def test_readme_table_has_type_default_and_bounds_of_every_key():
    table = config_docs.render_table()
    for key, *_ in config_docs.fields():
        assert f"| `{key}` | " in table
    assert "| `train.seed` | int | `42` | in [0, 4294967295] |" in table
    assert "| `lora.layers` | list[int] or null | `null` | each >= 0 |" in table
    assert "| `train.precision` | str | `auto` | auto, bf16, fp16, fp32 |" in table
    assert "| `train.time_budget` | str or float or null | `null` | > 0 |" in table  # a union


def test_readme_without_markers_is_an_error():
    with pytest.raises(ValueError, match="config-table:start"):
        config_docs.render_readme("# no table here\n")
