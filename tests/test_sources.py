"""`offline:` model sources: a model zipped and split over several (fake) installed packages."""

from __future__ import annotations

import base64
import errno
import hashlib
import importlib
import zipfile
from pathlib import Path

import pytest

from agnews_lora import sources
from agnews_lora.cli import main
from agnews_lora.errors import UserError
from agnews_lora.modeling import load_model_config, resolve_model_path

NAME = "tiny-split"
SPEC = "offline:" + NAME
PACKAGES = tuple(f"tiny-split-part-{i:03d}" for i in (1, 2, 3))


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_dist(
    site: Path, package: str, version: str, files: dict[str, bytes], record: dict | None = None
):
    """An installed distribution as pip leaves it: files + NAME-VERSION.dist-info with a RECORD."""
    info = site / f"{package.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        size, digest = (record or {}).get(rel, (len(data), _record_hash(data)))
        lines.append(f"{rel},sha256={digest},{size}")
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
    return info


def _piece_path(i: int) -> str:
    return f"tiny_split_part_{i:03d}/input/{NAME}.zip.{i:03d}"


@pytest.fixture
def split_model(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny RoBERTa as a zip of tiny-split/, split into 3 pieces in 3 fake packages."""
    zpath = tmp_path / "whole.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(tiny_model_dir.iterdir()):
            zf.write(f, f"{NAME}/{f.name}")
    data = zpath.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    pieces = [data[cut[i] : cut[i + 1]] for i in range(3)]
    site = tmp_path / "site"
    for i, (pkg, piece) in enumerate(zip(PACKAGES, pieces), start=1):
        write_dist(site, pkg, "1.0", {_piece_path(i): piece})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    cache = tmp_path / "cache"
    monkeypatch.setenv("AGNEWS_LORA_CACHE", str(cache))
    model = sources.SplitModel(
        folder=NAME, packages=PACKAGES, piece="tiny_split_part_{i:03d}/input/tiny-split.zip.{i:03d}"
    )
    monkeypatch.setitem(sources.SPLIT_MODELS, NAME, model)
    return {
        "site": site,
        "pieces": pieces,
        "models": cache / "models",
        "target": cache / "models" / f"{NAME}-1.0",
        "source": tiny_model_dir,
    }


def _left_in(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_assembled_once_into_the_cache_and_loads_like_a_local_dir(split_model, monkeypatch):
    path = Path(resolve_model_path(SPEC))
    assert path == split_model["target"] and (path / sources.MARKER).is_file()
    for f in split_model["source"].iterdir():
        assert (path / f.name).read_bytes() == f.read_bytes(), f.name
    assert load_model_config(SPEC).hidden_size == 32

    def no_second_assembly(*args, **kwargs):
        raise AssertionError("assembled twice")

    monkeypatch.setattr(sources, "assemble", no_second_assembly)
    assert resolve_model_path(SPEC) == str(path)
    assert _left_in(split_model["models"]) == [path.name]  # no temporary folders left


def test_plan_works_on_an_offline_model(split_model, capsys):
    assert main(["plan", "--model", SPEC, "--budget", "20000", "--ranks", "1,2"]) == 0
    assert "2 layers, hidden 32" in capsys.readouterr().out


def test_a_folder_without_a_valid_marker_is_never_trusted(split_model):
    target = split_model["target"]
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. left by an interrupted copy
    path = Path(resolve_model_path(SPEC))
    assert load_model_config(SPEC).hidden_size == 32 and (path / sources.MARKER).is_file()
    (path / sources.MARKER).write_text('{"model": "tiny-split", "pieces": []}')  # stale marker
    resolve_model_path(SPEC)
    assert '"size"' in (path / sources.MARKER).read_text()
    assert _left_in(split_model["models"]) == [target.name]


def _one_line_exit_2(capsys, message: str) -> str:
    assert main(["plan", "--model", SPEC]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("error: "), lines
    assert all(line.startswith("assembling ") for line in lines[:-1]), (
        lines
    )  # at most the progress notice
    return lines[-1]


def test_missing_part_names_the_package_to_install(split_model, capsys):
    import shutil

    shutil.rmtree(next(split_model["site"].glob("tiny_split_part_002-*.dist-info")))
    importlib.invalidate_caches()
    err = _one_line_exit_2(capsys, "pip install tiny-split-part-002")
    assert "tiny-split-part-001" not in err
    assert _left_in(split_model["models"]) == []


def test_corrupt_piece_is_refused_and_nothing_is_left(split_model, capsys):
    path = split_model["site"] / _piece_path(2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _one_line_exit_2(capsys, "is corrupt (sha256 differs from its RECORD)")
    assert _left_in(split_model["models"]) == []


def test_truncated_piece_is_refused(split_model, capsys):
    path = split_model["site"] / _piece_path(3)
    path.write_bytes(path.read_bytes()[:-100])
    _one_line_exit_2(capsys, "truncated or replaced")
    assert _left_in(split_model["models"]) == []


def test_piece_from_another_version_is_refused(split_model, capsys):
    site = split_model["site"]
    import shutil

    shutil.rmtree(next(site.glob("tiny_split_part_003-*.dist-info")))
    write_dist(site, PACKAGES[2], "2.0", {_piece_path(3): split_model["pieces"][2]})
    importlib.invalidate_caches()
    _one_line_exit_2(capsys, "different versions (1.0, 2.0")
    assert _left_in(split_model["models"]) == []


def test_pieces_that_match_their_records_but_not_each_other(split_model, capsys):
    """A piece from another build of the same version: its RECORD agrees, the zip's CRC does not."""
    site = split_model["site"]
    import shutil

    good = split_model["pieces"][1]
    other = bytes(b ^ 0x55 for b in good)  # same size, other content
    shutil.rmtree(next(site.glob("tiny_split_part_002-*.dist-info")))
    write_dist(site, PACKAGES[1], "1.0", {_piece_path(2): other})
    importlib.invalidate_caches()
    _one_line_exit_2(capsys, "do not form a valid zip")
    assert _left_in(split_model["models"]) == []


def test_full_disk_while_extracting_leaves_nothing_to_trust(split_model, monkeypatch, capsys):
    real = sources.shutil.copyfileobj
    calls = []

    def fill_up(src, dst, length=0):
        calls.append(1)
        if len(calls) == 3:  # a few files are out already
            dst.write(src.read(10))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, length)

    monkeypatch.setattr(sources.shutil, "copyfileobj", fill_up)
    _one_line_exit_2(capsys, "no space left in")
    assert _left_in(split_model["models"]) == []
    monkeypatch.setattr(
        sources.shutil, "copyfileobj", real
    )  # space freed: the next run assembles it
    assert Path(resolve_model_path(SPEC)).is_dir()


def test_unknown_offline_model():
    with pytest.raises(
        UserError, match="unknown offline model 'offline:nope'; known: offline:all-mpnet-base-v2"
    ):
        resolve_model_path("offline:nope")


def test_the_real_mpnet_parts_are_found_without_reading_them():
    model = sources.SPLIT_MODELS["all-mpnet-base-v2"]
    try:
        pieces = sources.find_pieces("offline:all-mpnet-base-v2", model)
    except UserError as e:
        pytest.skip(f"part packages not installed: {e}")
    assert [p.package for p in pieces] == list(model.packages)
    assert all(p.path.is_file() and p.path.stat().st_size == p.size for p in pieces)
    assert sum(p.size for p in pieces) > 400_000_000


def test_mpnet_without_sdpa_names_the_setting_to_change(tmp_path):
    """transformers 5 has no SDPA kernel for MPNet: say what to set, not 'the Hub failed'."""
    from transformers import MPNetConfig, MPNetForMaskedLM

    from agnews_lora.config import Config, apply_overrides
    from agnews_lora.modeling import load_base_model

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    MPNetForMaskedLM(MPNetConfig(vocab_size=100, **small)).save_pretrained(tmp_path)
    cfg = apply_overrides(Config(), [f"model.name_or_path={tmp_path}"])
    with pytest.raises(UserError, match="set model.attn_implementation=eager") as err:
        load_base_model(cfg)
    assert "Hub" not in str(err.value)
    cfg = apply_overrides(cfg, ["model.attn_implementation=eager"])
    assert type(load_base_model(cfg)).__name__ == "MPNetForSequenceClassification"
