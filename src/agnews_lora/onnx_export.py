"""Export a finished run's ``merged/`` model to ONNX or OpenVINO, checked against PyTorch.

``export_model(run_dir, "onnx" | "openvino", int8)`` writes ``RUN_DIR/export/<format>[-int8]/``:
the model (``model.onnx``, or ``model.xml`` + ``model.bin``), the tokenizer files, the model's
``config.json`` and ``export.json`` (what was exported, from which ``merged/``, and the agreement
figures). It is written under a temporary name and renamed into place only after the exported
model agreed with PyTorch on a sample of rows (the run's validation rows when they can be
loaded, else the texts given); an export that disagrees beyond `TOLERANCES` is a UserError and
leaves nothing in ``export/``.

* ONNX: ``torch.onnx.export(..., dynamo=True)`` (the `torch.export` based exporter; the older
  TorchScript exporter bakes the example's sequence length into RoBERTa's and BERT's attention
  masks under transformers 5), dynamic batch and sequence axes, inputs ``input_ids`` and
  ``attention_mask`` (segment ids are the model's own zeros). int8: ONNX Runtime's dynamic
  quantisation, int8 weights of every MatMul, activations quantised per batch at run time.
* OpenVINO: ``openvino.convert_model`` of that ONNX file; int8: NNCF weight compression (int8
  weights, asymmetric, per output channel).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .runs import load_finished_run, write_json
from .runtimes import (  # noqa: F401 (source_fingerprint: re-export)
    RUNTIME_BACKENDS,
    export_dir,
    export_name,
    padded_batches,
    require,
    runtime_failures_refused,
    source_fingerprint,
)

log = logging.getLogger(__name__)

OPSET = 20


@dataclass(frozen=True)
class Tolerance:
    """How far an export may be from PyTorch on the check rows (probabilities after softmax)."""

    max_prob_diff: float  # max over rows and classes of |p_export - p_torch|
    min_agreement: float  # fraction of decided rows whose predicted label is the same
    tie_margin: float  # a row is decided when PyTorch's top-two probabilities differ by >= this


# fp32 runtimes differ from PyTorch by float rounding (~1e-6 in probability): any real
# disagreement is a broken export (with |Δ prob| <= 1e-3 a label can only flip where PyTorch's
# top two are within 2e-3: those rows are not counted). int8 moves probabilities by up to a few
# 1e-2 and flips near-ties; flips between two labels PyTorch rates within 5 points of each other
# are not counted, more than 1 % flipped among the other rows is an accuracy loss worth refusing.
TOLERANCES = {
    False: Tolerance(max_prob_diff=1e-3, min_agreement=1.0, tie_margin=2e-3),
    True: Tolerance(max_prob_diff=0.1, min_agreement=0.99, tie_margin=0.05),
}


def _packages(fmt: str, int8: bool) -> None:
    """Fail early, before any work, when an optional package the export needs is missing."""
    extra = "onnx" if fmt == "onnx" else "openvino"
    for module in ("onnx", "onnxscript"):  # torch.onnx's exporter; OpenVINO converts its output
        require(module, extra)
    require("onnxruntime" if fmt == "onnx" else "openvino", extra)
    if fmt == "openvino" and int8:
        require("nncf", "openvino")


def load_torch_model(run_dir: Path, cfg):
    """The run's merged model in fp32, eval mode, and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = run_dir / "merged"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            merged, attn_implementation=cfg.model.attn_implementation, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(merged)
    except Exception as e:  # noqa: BLE001 - any failure of the library: one line
        raise UserError(
            f"run '{run_dir}': merged/ model cannot be loaded "
            f"({type(e).__name__}: {str(e)[:120]}); train it again"
        ) from None
    return model.eval().requires_grad_(False), tokenizer


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Silence a library's progress prints, warnings and log lines below ERROR for a while."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _logits_module(model):
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(model).eval()


def export_onnx_file(model, path: Path, opset: int = OPSET) -> None:
    """A transformers sequence classifier -> ``path`` (ONNX, dynamic batch x sequence axes)."""
    import torch
    from torch.export import Dim

    ids = torch.arange(3, 35, dtype=torch.long).reshape(2, 16) % model.config.vocab_size
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    batch, seq = Dim("batch"), Dim("sequence")
    try:
        with _quiet("torch.onnx", "torch.export", "onnxscript"):
            torch.onnx.export(
                _logits_module(model),
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={
                    "input_ids": {0: batch, 1: seq},
                    "attention_mask": {0: batch, 1: seq},
                },
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - any failure of the library: one line
        raise UserError(
            f"torch.onnx cannot export this model ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})"
        ) from None


def quantize_onnx_file(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation: QInt8 weights, activations quantised at run time."""
    require("onnxruntime.quantization", "onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(""):  # it logs "consider pre-processing" on the root logger
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def convert_openvino(onnx_path: Path, xml_path: Path, int8: bool) -> None:
    """OpenVINO IR (fp32 weights, or int8 weights by NNCF weight compression) from an ONNX file."""
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    if int8:
        nncf = require("nncf", "openvino")
        with _quiet("nncf"):
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def check_texts(
    cfg, texts: Sequence[str] | None, rows: int, seed: int = 0
) -> tuple[list[str], str]:
    """Up to ``rows`` texts to compare on: the run's validation rows if loadable, else ``texts``."""
    from .data import load_splits

    try:
        pool, source = list(load_splits(cfg)["validation"].texts), "validation"
    except Exception as e:  # noqa: BLE001 - no training file here / no Hub: fall back to the texts
        log.info("validation rows unavailable for the export check (%s)", e)
        if not texts:
            raise UserError(
                "the run's validation rows cannot be loaded here and no texts were given "
                "to check the export against PyTorch"
            ) from None
        pool, source = list(texts), "given texts"
    if len(pool) > rows:
        pick = np.sort(np.random.default_rng(seed).choice(len(pool), rows, replace=False))
        pool = [pool[i] for i in pick]
    return pool, source


def agreement(
    model,
    backend,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    tie_margin: float,
    batch_size: int = 64,
) -> dict:
    """PyTorch (fp32) vs ``backend`` on the same padded batches: label agreement and |Δ prob|.

    ``label_agreement`` counts every row; ``decided_agreement`` only the ``decided_rows``, those
    where PyTorch's two most probable labels are at least ``tie_margin`` apart.
    """
    import torch

    from .scores import softmax

    same = diffs = 0.0
    worst = worst_logit = 0.0
    n = decided = decided_same = 0
    with torch.inference_mode():
        for _, ids, mask in padded_batches(tokenizer, texts, max_length, batch_size):
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            ref = ref.logits.float().numpy()
            with runtime_failures_refused(backend.kind, backend.name):
                got = backend.logits(ids, mask)
            p, q = softmax(ref.astype(np.float64)), softmax(got.astype(np.float64))
            agree = p.argmax(1) == q.argmax(1)
            top2 = np.sort(p, axis=1)[:, -2:]
            sure = (top2[:, 1] - top2[:, 0]) >= tie_margin
            same += float(agree.sum())
            decided += int(sure.sum())
            decided_same += int((agree & sure).sum())
            d = np.abs(p - q)
            diffs += float(d.max(1).sum())
            worst = max(worst, float(d.max()))
            worst_logit = max(worst_logit, float(np.abs(ref - got).max()))
            n += len(ids)
    return {
        "rows": n,
        "label_agreement": same / max(n, 1),
        "decided_rows": decided,
        "decided_agreement": decided_same / max(decided, 1),
        "max_abs_prob_diff": worst,
        "mean_max_abs_prob_diff": diffs / max(n, 1),
        "max_abs_logit_diff": worst_logit,
    }


def _within(figures: dict, tol: Tolerance) -> bool:
    return (
        figures["max_abs_prob_diff"] <= tol.max_prob_diff
        and figures["decided_agreement"] >= tol.min_agreement
    )


def _write_model(model, fmt: str, int8: bool, out: Path, scratch: Path) -> None:
    target = out / "model.onnx" if fmt == "onnx" and not int8 else scratch / "model.onnx"
    export_onnx_file(model, target)
    if fmt == "onnx" and int8:
        quantize_onnx_file(target, out / "model.onnx")
    elif fmt == "openvino":
        convert_openvino(target, out / "model.xml", int8)


def _versions(fmt: str) -> dict:
    import importlib.metadata as md

    names = ["torch", "onnx", "onnxscript"] + (
        ["onnxruntime"] if fmt == "onnx" else ["openvino", "nncf"]
    )
    out = {}
    for name in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def export_model(
    run_dir: str | Path,
    fmt: str,
    int8: bool = False,
    overwrite: bool = False,
    texts: Sequence[str] | None = None,
    check_rows: int = 1000,
    tolerance: Tolerance | None = None,
    threads: int | None = None,
) -> Path:
    """Export ``RUN_DIR/merged`` to ``RUN_DIR/export/<fmt>[-int8]/`` and return that directory.

    Refused (UserError, nothing written) when the format or a package is missing, the directory
    exists without ``overwrite``, or the export disagrees with PyTorch beyond ``tolerance``
    (default `TOLERANCES`) on up to ``check_rows`` rows.
    """
    run_dir = Path(run_dir)
    name = export_name(fmt, int8)
    cfg, _ = load_finished_run(run_dir)
    _packages(fmt, int8)
    target = export_dir(run_dir, fmt, int8)
    if target.exists() and not overwrite:
        raise UserError(f"'{target}' already exists; pass --overwrite to replace it")
    tol = tolerance or TOLERANCES[bool(int8)]
    sample, sample_source = check_texts(cfg, texts, check_rows)
    exports = target.parent
    made_exports = not exports.exists()
    exports.mkdir(parents=True, exist_ok=True)
    tmp = exports / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        scratch = tmp / ".scratch"
        scratch.mkdir()
        model, tokenizer = load_torch_model(run_dir, cfg)
        t0 = time.perf_counter()
        _write_model(model, fmt, int8, tmp, scratch)
        shutil.rmtree(scratch)
        seconds = time.perf_counter() - t0
        tokenizer.save_pretrained(tmp)
        shutil.copy2(run_dir / "merged" / "config.json", tmp / "config.json")
        info = {
            "format": fmt,
            "int8": bool(int8),
            "opset": OPSET,
            "max_length": cfg.model.max_length,
            "label_names": [str(n) for n in cfg.data.label_names],
            "source": source_fingerprint(run_dir / "merged"),
            "quantization": _quantization(fmt, int8),
            "export_seconds": round(seconds, 2),
            "versions": _versions(fmt),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(tmp / "export.json", info)
        backend = RUNTIME_BACKENDS[fmt](tmp, threads=threads)
        figures = agreement(model, backend, tokenizer, sample, cfg.model.max_length, tol.tie_margin)
        info["check"] = {
            **figures,
            "rows_from": sample_source,
            "tolerance": asdict(tol),
            "passed": _within(figures, tol),
        }
        if not info["check"]["passed"]:
            raise UserError(
                f"the {name} export disagrees with PyTorch on {sample_source} rows: label "
                f"agreement {figures['decided_agreement']:.2%} of {figures['decided_rows']} rows "
                f"PyTorch decides by >= {tol.tie_margin:g} (needs >= {tol.min_agreement:.2%}), "
                f"max |Δ prob| {figures['max_abs_prob_diff']:.2g} "
                f"(needs <= {tol.max_prob_diff:.2g}); not written"
            )
        write_json(tmp / "export.json", info)
        del backend
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_exports:
            with contextlib.suppress(OSError):
                exports.rmdir()  # only if empty
        raise
    return target


def _quantization(fmt: str, int8: bool) -> str | None:
    if not int8:
        return None
    if fmt == "onnx":
        return (
            "onnxruntime dynamic quantisation: QInt8 weights (MatMul), uint8 activations per batch"
        )
    return "NNCF weight compression: INT8_ASYM weights, per output channel; fp32 activations"
