"""ONNX Runtime / OpenVINO exports of a run: checked against PyTorch, refused when they disagree."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agnews_lora import onnx_export
from agnews_lora.backends import load_backend
from agnews_lora.errors import UserError
from agnews_lora.onnx_export import export_model
from agnews_lora.prediction import Predictor, softmax
from agnews_lora.runtimes import (
    OnnxBackend,
    OpenVinoBackend,
    backend_logits,
    check_backend,
    export_dir,
)
from agnews_lora.tiny import synthetic_rows

ROOT = Path(__file__).resolve().parents[1]


def has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


HAS_ONNX = has("onnx", "onnxscript", "onnxruntime")
HAS_OPENVINO = has("onnx", "onnxscript", "openvino")
HAS_NNCF = HAS_OPENVINO and has("nncf")
VARIANTS = [
    pytest.param(
        "onnx", False, marks=pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
    ),
    pytest.param(
        "onnx", True, marks=pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
    ),
    pytest.param(
        "openvino",
        False,
        marks=pytest.mark.skipif(not HAS_OPENVINO, reason="pip install '.[openvino]'"),
    ),
    pytest.param(
        "openvino", True, marks=pytest.mark.skipif(not HAS_NNCF, reason="pip install '.[openvino]'")
    ),
]


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory) -> Path:
    """A copy of the tiny trained run that this module may write exports into."""
    return Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("exported") / "run"))


@pytest.fixture(scope="module")
def exported(run_copy):
    """Export on first use, once per (format, int8) for the module."""
    done = {}

    def get(fmt: str, int8: bool) -> Path:
        if (fmt, int8) not in done:
            done[fmt, int8] = export_model(run_copy, fmt, int8)
        return done[fmt, int8]

    return get


@pytest.mark.parametrize("fmt,int8", VARIANTS)
def test_export_runs_like_torch(run_copy, exported, fmt, int8):
    path = exported(fmt, int8)
    assert path == run_copy / "export" / (fmt + ("-int8" if int8 else ""))
    assert (path / ("model.onnx" if fmt == "onnx" else "model.xml")).is_file()
    assert (path / "tokenizer.json").is_file() and (path / "config.json").is_file()
    assert not list(path.parent.glob(".*"))  # no temporary directory left behind
    info = json.loads((path / "export.json").read_text())
    assert info["format"] == fmt and info["int8"] is int8 and info["opset"] == onnx_export.OPSET
    assert len(info["source"]["sha256"]) == 64
    check = info["check"]
    assert check["passed"] and check["rows_from"] == "validation" and check["rows"] == 80

    backend = load_backend(run_copy, fmt, int8, threads=1)
    assert backend.name == path.name
    texts = [t for t, _ in synthetic_rows(120, seed=11)]
    torch_logits, _ = Predictor.from_run(run_copy, precision="fp32").logits(texts)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(path)
    got = backend_logits(backend, tokenizer, texts, info["max_length"], batch_size=32)
    assert got.dtype == np.float32 and got.shape == torch_logits.shape
    prob_diff = np.abs(softmax(got) - softmax(torch_logits)).max()
    agree = (got.argmax(1) == torch_logits.argmax(1)).mean()
    if int8:
        assert prob_diff <= onnx_export.TOLERANCES[True].max_prob_diff and agree >= 0.95
        assert np.abs(got - torch_logits).max() > 1e-6  # it is a different (quantised) model
    else:
        assert np.abs(got - torch_logits).max() < 1e-4 and agree == 1.0

    # dynamic axes: batch and sequence lengths unlike the export's example, padding included
    ids = np.full((3, 37), 1, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate((37, 9, 2)):
        ids[row, :n] = np.arange(n) % 200 + 5
        mask[row, :n] = 1
    torch_model = Predictor.from_run(run_copy, precision="fp32").model
    import torch

    with torch.inference_mode():
        ref = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    if int8:
        diff = np.abs(softmax(backend.logits(ids, mask)) - softmax(ref.logits.numpy())).max()
        assert diff <= onnx_export.TOLERANCES[True].max_prob_diff
    else:
        assert np.abs(backend.logits(ids, mask) - ref.logits.numpy()).max() < 1e-4
    assert backend.logits(ids[1:2, :9], mask[1:2, :9]).shape == (1, 4)


@pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
def test_backend_refuses_an_export_of_an_older_merged_model(run_copy, exported, tmp_path):
    exported("onnx", False)
    run = Path(shutil.copytree(run_copy, tmp_path / "run"))
    assert load_backend(run, "onnx").name == "onnx"  # a copy (same mtimes) is the same model
    weights = next((run / "merged").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # "retrained": other weights
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="older merged/ model; export again"):
        load_backend(run, "onnx")


@pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
def test_onnx_exporter_handles_bert_at_any_batch_and_length(tmp_path):
    """MiniLM is a BERT: segment-id embeddings, no position offset; the graph takes ids + mask."""
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=300,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=4,
        )
    ).eval()
    onnx_export.export_onnx_file(model, tmp_path / "bert.onnx")
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    rng = np.random.default_rng(0)
    for batch, length in ((1, 3), (5, 50)):
        ids = rng.integers(5, 300, (batch, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[0, length // 2 + 1 :] = 0
        with torch.inference_mode():
            ref = model(
                input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
            ).logits
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert got.shape == (batch, 4) and np.abs(got - ref.numpy()).max() < 1e-5


class Flipped(OnnxBackend):
    """A broken runtime: the logits in reverse class order."""

    def logits(self, input_ids, attention_mask):
        return super().logits(input_ids, attention_mask)[:, ::-1].copy()


def _run_whose_exporter_copies_a_real_export(run_copy, exported, tmp_path, monkeypatch) -> Path:
    """A copy of the run whose ONNX exporter copies in the real export made once (fast); the runtime is
    then swapped for a broken one by the caller."""
    model_file = exported("onnx", False) / "model.onnx"
    run = Path(shutil.copytree(run_copy, tmp_path / "run", ignore=shutil.ignore_patterns("export")))
    monkeypatch.setattr(
        onnx_export, "export_onnx_file", lambda model, path, **_: shutil.copy(model_file, path)
    )
    return run


class _FailingSession:
    """What ONNX Runtime's session / OpenVINO's infer request do where a node has no kernel here."""

    def run(self, *args, **kwargs):
        raise RuntimeError(
            "Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
            "Exception from src/plugins/intel_cpu/src/node.cpp:823:\n"
            "[CPU] FullyConnectedCompressed node with name 'node_MatMul_79' could not create a "
            "primitive descriptor\n"
        )

    infer = run

    def create_infer_request(self):
        return self

    outputs = ["logits"]


def _failing(backend_cls, name):
    """A backend of ``backend_cls`` whose runtime fails at inference (built without an export)."""
    import threading

    backend = backend_cls.__new__(backend_cls)
    backend.kind, backend.name, backend.quantized = name.split("-")[0], name, name.endswith("int8")
    backend.input_names = ["input_ids", "attention_mask"]
    backend.session = _FailingSession()
    backend._local = threading.local()
    backend._local.compiled = backend.session  # OpenVINO: this thread's compiled model
    return backend


def test_runtime_that_fails_at_inference_is_one_line_for_predict_evaluate_and_serve(trained_run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_run / "merged")
    for cls, name in ((OnnxBackend, "onnx"), (OpenVinoBackend, "openvino-int8")):
        predictor = Predictor(_failing(cls, name), tokenizer, ["a", "b", "c", "d"], 32)
        with pytest.raises(UserError) as err:
            predictor.classify(["stocks fell", "the match ended"])
        msg = str(err.value)
        assert "\n" not in msg and "Exception from" not in msg
        assert msg.startswith(f"the {name.split('-')[0]} runtime could not run the {name} export")
        assert "[CPU] FullyConnectedCompressed node" in msg and "use --backend torch" in msg


class Crashing(OnnxBackend):
    """A backend whose own logits fail (it does not wrap its runtime's call)."""

    def logits(self, input_ids, attention_mask):
        return _FailingSession().run()


class FailsInside(OnnxBackend):
    """The real ONNX backend, whose runtime session then fails (wrapped by the backend)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.session = _FailingSession()


@pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
@pytest.mark.parametrize("broken", [Crashing, FailsInside])
def test_runtime_that_fails_on_this_machine_is_one_line_and_leaves_nothing(
    broken, run_copy, exported, tmp_path, monkeypatch
):
    run = _run_whose_exporter_copies_a_real_export(run_copy, exported, tmp_path, monkeypatch)
    monkeypatch.setitem(onnx_export.RUNTIME_BACKENDS, "onnx", broken)
    with pytest.raises(UserError) as err:
        export_model(run, "onnx")
    msg = str(err.value)
    assert "\n" not in msg and "onnx runtime could not run the onnx export on this machine" in msg
    assert "[CPU] FullyConnectedCompressed node with name 'node_MatMul_79'" in msg
    assert "Exception from" not in msg and msg.endswith("export without --int8")
    assert "use --backend torch" not in msg
    assert not (run / "export").exists()


@pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
def test_export_that_disagrees_is_refused_and_leaves_nothing(
    run_copy, exported, tmp_path, monkeypatch
):
    run = _run_whose_exporter_copies_a_real_export(run_copy, exported, tmp_path, monkeypatch)
    monkeypatch.setitem(onnx_export.RUNTIME_BACKENDS, "onnx", Flipped)
    with pytest.raises(UserError, match="disagrees with PyTorch on validation rows.*not written"):
        export_model(run, "onnx")
    assert not (run / "export").exists()

    monkeypatch.setitem(onnx_export.RUNTIME_BACKENDS, "onnx", OnnxBackend)
    good = export_model(run, "onnx")
    before = (good / "export.json").read_text()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        export_model(run, "onnx")
    strict = onnx_export.Tolerance(max_prob_diff=0.0, min_agreement=1.0, tie_margin=0.0)
    monkeypatch.setitem(onnx_export.RUNTIME_BACKENDS, "onnx", Flipped)
    with pytest.raises(UserError, match="disagrees"):
        export_model(run, "onnx", overwrite=True, tolerance=strict)
    assert sorted(p.name for p in (run / "export").iterdir()) == ["onnx"]  # the old one, intact
    assert (good / "export.json").read_text() == before


def test_missing_optional_packages_name_the_extra(trained_run, monkeypatch, tmp_path):
    for module, extra, fmt, backend in (
        ("onnxruntime", "onnx", "onnx", OnnxBackend),
        ("openvino", "openvino", "openvino", OpenVinoBackend),
    ):
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
        with pytest.raises(UserError, match=rf"pip install 'agnews-lora\[{extra}\]'"):
            export_model(trained_run, fmt)
        with pytest.raises(UserError, match=rf"pip install 'agnews-lora\[{extra}\]'"):
            backend(tmp_path)
    assert not (trained_run / "export").exists()


def test_unknown_backend_or_format_and_missing_export_are_user_errors(trained_run):
    with pytest.raises(UserError, match="unknown backend 'tensorrt' .*torch, onnx, openvino"):
        check_backend("tensorrt")
    with pytest.raises(UserError, match="unknown backend"):
        load_backend(trained_run, "tensorrt")
    with pytest.raises(UserError, match="unknown export format 'tflite' .*onnx, openvino"):
        export_model(trained_run, "tflite")
    if HAS_ONNX:
        with pytest.raises(
            UserError,
            match=r"has no onnx-int8 export yet; write it with "
            r"`agnews-lora export .+ --format onnx --quantize int8`$",
        ):
            load_backend(trained_run, "onnx", int8=True)
    assert export_dir(trained_run, "openvino", True) == trained_run / "export" / "openvino-int8"


def test_backend_passes_zero_segment_ids_to_graphs_that_take_them():
    from agnews_lora.runtimes import _feeds

    ids = np.array([[5, 6, 7]], dtype=np.int32)
    feeds = _feeds(["input_ids", "attention_mask", "token_type_ids"], ids, np.ones_like(ids))
    assert feeds["input_ids"].dtype == np.int64 and feeds["token_type_ids"].tolist() == [[0, 0, 0]]
    assert set(_feeds(["input_ids", "attention_mask"], ids, np.ones_like(ids))) == {
        "input_ids",
        "attention_mask",
    }
    with pytest.raises(UserError, match="position_ids"):
        _feeds(["input_ids", "position_ids"], ids, np.ones_like(ids))


@pytest.mark.skipif(not HAS_ONNX, reason="pip install '.[onnx]'")
def test_cpu_runtimes_benchmark_prints_a_table_and_writes_json(
    run_copy, exported, data_dir, tmp_path
):
    for fmt, int8 in [("onnx", False), ("onnx", True)] + (
        [("openvino", False)] if HAS_OPENVINO else []
    ):
        exported(fmt, int8)
    run = shutil.copytree(
        run_copy, tmp_path / "run", ignore=shutil.ignore_patterns("openvino-int8")
    )
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "cpu_runtimes.py"),
            "--run",
            str(run),
            "--data",
            str(data_dir / "test.csv"),
            "--rows",
            "100",
            "--threads",
            "1",
            "--no-export",
            "--json",
            str(out),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert {"torch-fp32", "onnx", "onnx-int8"} <= set(rows)
    for name in ("torch-fp32", "onnx", "onnx-int8"):
        r = rows[name]
        assert r["samples_per_s"] > 0 and 0 <= r["accuracy"] <= 1 and r["rows"] == 100
        assert name in proc.stdout
    assert rows["torch-fp32"]["agreement_vs_torch_fp32"] == 1.0
    assert rows["onnx"]["agreement_vs_torch_fp32"] == 1.0
    assert abs(rows["onnx"]["accuracy"] - rows["torch-fp32"]["accuracy"]) < 1e-9
    assert "no export" in rows["openvino-int8"]["skipped"]  # --no-export: not made here
    assert all("samples_per_s" in r or "skipped" in r for r in rows.values())


@pytest.mark.skipif(not HAS_OPENVINO, reason="pip install '.[openvino]'")
def test_openvino_backend_answers_several_threads_at_once(run_copy, exported):
    """serve --workers 2 calls one backend from two threads: each gets its own infer request."""
    from concurrent.futures import ThreadPoolExecutor

    exported("openvino", False)
    backend = load_backend(run_copy, "openvino", threads=1)
    rng = np.random.default_rng(3)
    batches = []
    for n in range(12):
        ids = rng.integers(5, 200, (4, 8 + 8 * (n % 3))).astype(np.int64)
        batches.append((ids, np.ones_like(ids)))
    alone = [backend.logits(ids, mask) for ids, mask in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: backend.logits(*b), batches * 3))
    for got, want in zip(together, alone * 3):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.skipif(not HAS_OPENVINO, reason="pip install '.[openvino]'")
def test_openvino_compiles_one_model_per_thread_count_and_they_agree(run_copy, exported):
    """`use_threads(threads, streams)`: one stream and all threads for a batch alone, a stream per
    worker under load (one stream runs one inference at a time); the same logits either way."""
    exported("openvino", False)
    backend = load_backend(run_copy, "openvino", threads=1)
    assert not backend._compiled  # nothing compiled until a model is used (serve picks its own)
    rng = np.random.default_rng(5)
    ids = rng.integers(5, 200, (3, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    want = backend.logits(ids, mask)
    for threads, streams in [(2, 1), (1, 2)]:
        backend.use_threads(threads, streams)
        compiled = backend.compiled_for(threads, streams)
        assert int(compiled.get_property("NUM_STREAMS")) == streams
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads * streams
        np.testing.assert_allclose(backend.logits(ids, mask), want, atol=1e-5)
    assert backend.compiled_for(1, 2) is backend.compiled_for(1, 2)  # compiled once
