"""`agnews-lora export` and `--backend onnx|openvino` on `evaluate`, `predict` and `serve`."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerProcess

from agnews_lora.cli import main
from agnews_lora.cli_options import BACKEND_CHOICES
from agnews_lora.runtimes import BACKENDS
from agnews_lora.tiny import synthetic_rows

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")


@pytest.fixture(scope="module")
def onnx_run(trained_run, tmp_path_factory):
    """A copy of the tiny run with an ONNX export made by the CLI, and what `export` printed."""
    if not HAS_ONNX:
        pytest.skip("pip install '.[onnx]'")
    run = Path(
        shutil.copytree(
            trained_run,
            tmp_path_factory.mktemp("cli-onnx") / "run",
            ignore=shutil.ignore_patterns("eval", "export"),
        )
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["export", str(run), "--format", "onnx"]) == 0
    return run, out.getvalue()


@pytest.fixture(scope="module")
def fp32(trained_run):
    from agnews_lora.prediction import Predictor

    return Predictor.from_run(trained_run, precision="fp32")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_parser_lists_every_backend():
    assert BACKEND_CHOICES == "{" + ",".join(BACKENDS) + "}"


@needs_onnx
def test_export_prints_what_it_wrote_and_how_well_it_agrees(onnx_run, capsys):
    run, printed = onnx_run
    info = json.loads((run / "export" / "onnx" / "export.json").read_text())
    assert info["check"]["passed"] and info["check"]["label_agreement"] == 1.0
    assert f"written        {run / 'export' / 'onnx'}/ (model.onnx," in printed
    assert f"on {info['check']['rows']} validation rows: same label on 100.00%" in printed
    assert "max |Δ prob|" in printed and "(needs <= 0.001)" in printed
    assert f"next           agnews-lora evaluate {run} --backend onnx\n" in printed

    assert main(["export", str(run), "--format", "onnx"]) == 2  # refused before any work
    assert one_error_line(capsys).endswith("already exists; pass --overwrite to replace it")


@needs_onnx
def test_evaluate_and_predict_with_onnx_give_torchs_labels(onnx_run, fp32, data_dir, tmp_path):
    run, _ = onnx_run
    assert main(["evaluate", str(run), "--backend", "onnx"]) == 0
    m = json.loads((run / "eval" / "test-onnx" / "metrics.json").read_text())
    rows = read_rows(data_dir / "test.csv")
    labels = np.array(
        [
            fp32.label_names.index(r["label"]) if not r["label"].isdigit() else int(r["label"])
            for r in rows
        ]
    )
    expected = np.array(fp32.predict([r["text"] for r in rows]))
    assert m["backend"] == "onnx" and m["quantized"] is False and m["precision_used"] == "fp32"
    assert m["rows"] == len(rows) and m["accuracy"] == pytest.approx((expected == labels).mean())
    cm = np.zeros((4, 4), dtype=int)
    np.add.at(cm, (labels, expected), 1)
    assert m["confusion_matrix"] == cm.tolist()  # the same predictions, row by row
    assert not (run / "eval" / "test").exists()  # torch's held-out results are not touched

    out = tmp_path / "onnx.csv"
    argv = [
        "predict",
        str(run),
        "--input",
        str(data_dir / "unlabelled.csv"),
        "--output",
        str(out),
        "--probabilities",
        "--backend",
        "onnx",
    ]
    assert main(argv) == 0
    got = read_rows(out)
    texts = [r["text"] for r in read_rows(data_dir / "unlabelled.csv")]
    assert [int(r["Label"]) for r in got] == fp32.predict(texts)
    probs = np.array([[float(r[f"p_{i}"]) for i in range(4)] for r in got])
    np.testing.assert_allclose(probs, fp32.predict_proba(texts), atol=1e-4)


@needs_onnx
def test_serve_with_the_onnx_backend(onnx_run, fp32, tmp_path):
    run, _ = onnx_run
    server = ServerProcess(run, tmp_path, "--backend", "onnx", "--workers", "2")
    try:
        url = server.ready().url
        info = httpx.get(f"{url}/v1/info", timeout=30).json()
        assert info["backend"] == "onnx" and info["precision"] == "fp32"
        assert info["quantized"] is False and info["device"] == "cpu"
        texts = [t for t, _ in synthetic_rows(24, seed=21)]
        chunks = [texts[i : i + 3] for i in range(0, len(texts), 3)]

        def classify(chunk):
            r = httpx.post(f"{url}/v1/classify", json={"texts": chunk}, timeout=60)
            assert r.status_code == 200, r.text
            return r.json()["results"]

        with ThreadPoolExecutor(8) as pool:  # concurrent requests, two workers
            results = [x for chunk in pool.map(classify, chunks) for x in chunk]
        assert [r["label"] for r in results] == fp32.predict(texts)
        probs = [[r["probabilities"][n] for n in fp32.label_names] for r in results]
        np.testing.assert_allclose(probs, fp32.predict_proba(texts), atol=1e-4)
    finally:
        server.stop()


@needs_onnx
def test_missing_export_names_the_command_that_writes_it(onnx_run, data_dir, tmp_path, capsys):
    run, _ = onnx_run
    out = tmp_path / "p.csv"
    for argv in (
        ["evaluate", str(run), "--backend", "onnx", "--quantize", "int8"],
        [
            "predict",
            str(run),
            "--input",
            str(data_dir / "unlabelled.csv"),
            "--output",
            str(out),
            "--backend",
            "onnx",
            "--int8",
        ],
        ["serve", str(run), "--port", "0", "--backend", "onnx", "--int8"],
    ):
        assert main(argv) == 2
        assert one_error_line(capsys) == (
            f"error: run '{run}' has no onnx-int8 export yet; write it with "
            f"`agnews-lora export {run} --format onnx --quantize int8`"
        )
    assert not (run / "eval" / "test-onnx-int8").exists() and not out.exists()


def test_unknown_backend_or_format_is_one_line_exit_2(trained_run, data_dir, tmp_path, capsys):
    out = tmp_path / "p.csv"
    for argv in (
        ["evaluate", str(trained_run), "--backend", "tensorrt"],
        [
            "predict",
            str(trained_run),
            "--input",
            str(data_dir / "unlabelled.csv"),
            "--output",
            str(out),
            "--backend",
            "tensorrt",
        ],
        ["serve", str(trained_run), "--port", "0", "--backend", "tensorrt"],
    ):
        assert main(argv) == 2
        assert one_error_line(capsys) == (
            "error: unknown backend 'tensorrt' (choices: torch, onnx, openvino)"
        )
    assert main(["export", str(trained_run), "--format", "tflite"]) == 2
    assert one_error_line(capsys) == (
        "error: unknown export format 'tflite' (choices: onnx, openvino)"
    )
    assert not (trained_run / "export").exists() and not out.exists()


def test_missing_runtime_package_names_the_extra(trained_run, data_dir, monkeypatch, capsys):
    for module, backend in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
        for argv in (
            ["export", str(trained_run), "--format", backend],
            ["evaluate", str(trained_run), "--backend", backend],
        ):
            assert main(argv) == 2
            assert one_error_line(capsys) == (
                f"error: '{module}' is not installed: pip install 'agnews-lora[{backend}]'"
            )
    assert not (trained_run / "export").exists()
    assert not (trained_run / "eval" / "test-onnx").exists()
