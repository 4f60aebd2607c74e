"""Inference: batched logits on sorted batches, and the `Predictor` that serves a finished run.

`Predictor` loads the run's ``merged/`` model (a plain transformers model, no LoRA side
branches), runs it under ``torch.inference_mode`` in bf16 where the hardware has it (the whole
model stored in bf16: no per-operation casts), and batches texts by length so that each batch
pads little.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .batching import collate, sorted_batches
from .data import Encoded, read_columns
from .devices import autocast_context, resolve_precision
from .errors import UserError
from .runs import load_finished_run

log = logging.getLogger(__name__)


def batched_logits(
    model,
    encoded: Encoded,
    batch_size: int,
    pad_id: int,
    device,
    indices: np.ndarray | None = None,
    autocast=contextlib.nullcontext,
    multiple: int = 16,
    max_length: int | None = None,
    progress: bool = False,
    min_tokens: int = 2048,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) for ``indices`` (default: all rows), longest batches first.

    Batches hold at most ``batch_size`` rows and, once they hold ``min_tokens`` padded tokens,
    end where the padded width changes (see `sorted_batches`; 0 = fixed ``batch_size`` batches).
    Returns ``(indices, logits)`` with rows in the order of ``indices``.
    """
    idx = np.arange(len(encoded)) if indices is None else np.asarray(indices)
    lengths = encoded.lengths[idx]
    out = np.zeros((len(idx), getattr(model, "module", model).config.num_labels), dtype=np.float32)  # DDP wraps .module
    batches = sorted_batches(lengths, batch_size, multiple, min_tokens)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch", leave=False)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for b in batches:
            batch = collate([encoded.ids[i] for i in idx[b]], pad_id, multiple, max_length)
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast():
                logits = model(**batch).logits
            out[b] = logits.float().cpu().numpy()
    model.train(was_training)
    return idx, out


def prepare_for_inference(model, precision: str):
    """Freeze ``model``; under bf16 store all of it in bf16 (in place) and return it.

    Autocast would keep LayerNorm, softmax and the residual stream in fp32 and cast activations
    back and forth around every matmul; a model stored in bf16 throughout skips those copies
    (7 % more batched texts/s serving MiniLM on an AMX CPU, the same held-out accuracy as under
    autocast; see docs/performance.md). fp16 keeps autocast (fp16 LayerNorm can overflow).
    """
    model.requires_grad_(False)
    if precision == "bf16":
        model.to(torch.bfloat16)
    return model


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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


class Predictor:
    """Classify texts with a finished run's merged model.

    >>> p = Predictor.from_run("runs/my-run")
    >>> p.predict(["Stocks rally as oil falls"])      # -> [2]
    >>> p.predict_proba("Stocks rally")               # -> array of shape (1, 4)
    """

    pad_multiple = 8  # no backward pass at inference: a finer shape grid costs little, padding costs every batch

    def __init__(self, model, tokenizer, label_names: list[str], max_length: int, batch_size: int = 128,
                 precision: str = "auto", device: str | None = None, quantized: bool = False):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.quantized = quantized
        self.precision = "fp32" if quantized else resolve_precision(precision, self.device.type)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.label_names = [str(n) for n in label_names]
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_run(cls, run_dir: str | Path, batch_size: int = 128, precision: str = "auto",
                 device: str | None = None, quantize: str | None = None) -> "Predictor":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        cfg, summary = load_finished_run(run_dir)
        merged = Path(run_dir) / "merged"
        try:
            model = AutoModelForSequenceClassification.from_pretrained(merged, attn_implementation=cfg.model.attn_implementation,
                                                                       dtype=torch.float32)  # precision is set below
            tokenizer = AutoTokenizer.from_pretrained(merged)
        except Exception as e:
            raise UserError(f"run '{run_dir}': merged/ model cannot be loaded ({type(e).__name__}: {str(e)[:120]}); train it again") from None
        if quantize not in (None, "int8"):
            raise UserError(f"unknown quantisation '{quantize}' (supported: int8)")
        if quantize == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            device = "cpu"
        p = cls(model, tokenizer, cfg.data.label_names, cfg.model.max_length, batch_size, precision, device, quantize == "int8")
        prepare_for_inference(p.model, p.precision)
        p.summary = summary
        return p

    def precision_context(self):
        """Autocast for a model kept in fp32; nothing for one stored in bf16 (`prepare_for_inference`)."""
        if self.precision == "fp32" or self.model.dtype == torch.bfloat16:
            return contextlib.nullcontext()
        return autocast_context(self.precision, self.device.type)

    def logits(self, texts: Sequence[str] | str) -> tuple[np.ndarray, list[bool]]:
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, len(self.label_names)), np.float32), []
        encoded, truncated = encode_texts(self.tokenizer, texts, self.max_length)
        _, out = batched_logits(self.model, encoded, self.batch_size, self.pad_id, self.device, autocast=self.precision_context,
                                multiple=self.pad_multiple, max_length=self.max_length,
                                progress=len(texts) > 20 * self.batch_size)
        return out, truncated

    def predict_proba(self, texts: Sequence[str] | str) -> np.ndarray:
        return softmax(self.logits(texts)[0])

    def predict(self, texts: Sequence[str] | str) -> list[int]:
        return [int(i) for i in self.logits(texts)[0].argmax(axis=1)]

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """Per text: label id, label name, probabilities by name, and whether it was truncated."""
        logits, truncated = self.logits(texts)
        probs = softmax(logits) if len(logits) else logits
        return [
            {"label": int(p.argmax()), "label_name": self.label_names[int(p.argmax())],
             "probabilities": {n: float(v) for n, v in zip(self.label_names, p)}, "truncated": t}
            for p, t in zip(probs, truncated)
        ]


def read_texts(path: str | Path, trust_pickle: bool = False) -> list[str]:
    """Texts to classify from CSV / JSONL / Parquet / a pickled datasets.Dataset with a `text` column."""
    from .data import to_table

    cols = read_columns(path, trust_pickle)
    cols.pop("label", None)  # labels, if present, are not needed to predict
    return to_table(cols, ["_"], f"'{path}'", require_labels=False).texts


def write_submission(path: str | Path, preds: Sequence[int], probs: np.ndarray | None = None,
                     label_names: list[str] | None = None) -> None:
    """Kaggle-style ``ID,Label`` CSV (ID = row position); extra columns are optional, appended after."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise UserError(f"output folder '{path.parent}' does not exist")
    header = ["ID", "Label"]
    if label_names is not None:
        header.append("LabelName")
    if probs is not None:
        names = label_names or [str(i) for i in range(probs.shape[1])]
        header += [f"p_{n}" for n in names]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i, y in enumerate(preds):
            row = [i, int(y)]
            if label_names is not None:
                row.append(label_names[int(y)])
            if probs is not None:
                row += [f"{v:.6f}" for v in probs[i]]
            w.writerow(row)
    os.replace(tmp, path)
