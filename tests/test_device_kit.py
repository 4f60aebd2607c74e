"""The GPU kit (benchmarks/device_kit.py, device_runs.py) on the tiny model: pieces that fit a carry,
a verified join that loads the fp16 weights, one line for a corrupt or missing piece, and the
parallel runner's results and logs."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_kit  # noqa: E402
import device_runs  # noqa: E402

CARRY = 160 * 1024  # bytes per carry folder: the small files, the rows and the weights need two


@pytest.fixture()
def kit(tiny_model_dir, data_dir, tmp_path) -> Path:
    k = tmp_path / "kit"
    args = ["pack", "--model", str(tiny_model_dir), "--data", str(data_dir / "train.csv")]
    args += ["--kit", str(k), "--carry-mib", str(CARRY / device_kit.MIB), "--tree-mib", "0"]
    assert device_kit.main([*args, "--no-wheels"]) == 0
    return k


def test_pack_cuts_carries_that_fit_and_unpack_joins_the_fp16_weights(
    kit, tiny_model_dir, tmp_path
):
    import torch
    from safetensors.torch import load_file

    manifest = json.loads((kit / "c1" / "manifest.json").read_text())
    assert len(manifest["carries"]) >= 2 and manifest["dtype"] == "fp16"
    for c in manifest["carries"]:
        assert sum(f.stat().st_size for f in (kit / c).rglob("*") if f.is_file()) <= CARRY
    assert not (kit.parent / "kit.tmp").exists()

    model = device_kit.unpack(kit, tmp_path / "model")
    original = load_file(tiny_model_dir / "model.safetensors")
    joined = load_file(model / "model.safetensors")
    assert joined.keys() == original.keys()
    for name, t in original.items():
        assert joined[name].dtype == torch.float16
        assert torch.equal(joined[name], t.to(torch.float16)), name
    # a plain model folder: the production loader takes it and keeps fp32 master weights
    from agnews_lora.config import load_config
    from agnews_lora.modeling import load_base_model

    net = load_base_model(load_config(None, [f"model.name_or_path={model}"]))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    emb = net.get_input_embeddings().weight
    assert torch.equal(
        emb, original[next(k for k in original if "word_embeddings" in k)].half().float()
    )
    assert device_kit.unpack(kit, tmp_path / "model") == model  # complete: reused, not joined again


def test_corrupt_or_missing_piece_is_one_line_and_leaves_no_model(kit, tmp_path, capsys):
    piece = next((kit / "c2").glob("weights.*"))
    data = bytearray(piece.read_bytes())
    data[100] ^= 0xFF
    piece.write_bytes(bytes(data))
    dest = tmp_path / "model"
    assert device_kit.main(["unpack", "--kit", str(kit), "--dest", str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: piece") and "corrupt" in err and "\n" not in err
    assert not dest.exists() and not (tmp_path / "model.tmp").exists()

    piece.unlink()
    assert device_kit.main(["unpack", "--kit", str(kit), "--dest", str(dest)]) == 2
    assert "missing: carry" in capsys.readouterr().err


def test_runner_trains_recipes_in_parallel_and_returns_results_and_logs(kit, tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    tiny = [
        "lora.target_modules=[query,value]",  # the recipes name MPNet's q, k, v
        "lora.layers=null",
        "model.max_length=64",
        "train.max_steps=3",
        "train.eval_every=3",
        "train.per_device_batch_size=8",
        "train.eval_batch_size=64",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    sets = [a for s in tiny for a in ("--set", s)]
    runs = ["seed-script-s42", "ours-outproj-full-s42"]  # the full head and the out_proj head
    argv = ["--kit", str(kit), "--out", str(out), "--work", str(work), "--jobs", "2", *sets]
    assert device_runs.main([*argv, "--runs", *runs]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == runs
    for r in results["runs"]:
        assert r["status"] == "done" and r["summary"]["steps"] == 3
        assert 0 <= r["test"]["accuracy"] <= 1 and r["test"]["rows"] == 80
    head = {r["name"]: r["summary"]["params"]["head"] for r in results["runs"]}
    assert head["ours-outproj-full-s42"] < head["seed-script-s42"]  # out_proj trains less head
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert f"{runs[0]}/summary.json" in names and f"{runs[1]}/eval/test/metrics.json" in names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)  # no weights come back
    assert "ours-outproj-full-s42" in capsys.readouterr().out  # the printed table


def test_runner_stops_runs_at_the_deadline_and_reports_them(kit, tmp_path):
    out = tmp_path / "out"
    argv = ["--kit", str(kit), "--out", str(out), "--work", str(tmp_path / "work"), "--jobs", "1"]
    assert (
        device_runs.main([*argv, "--deadline", "1", "--runs", "ours-full-s42", "seed-script-s7"])
        == 1
    )
    status = {
        r["name"]: r["status"] for r in json.loads((out / "results.json").read_text())["runs"]
    }
    assert status == {
        "ours-full-s42": "stopped at the deadline",
        "seed-script-s7": "not started (deadline)",
    }
