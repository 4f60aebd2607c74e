"""Inference: the one path from texts to labels, used by `evaluate`, `predict` and `serve`.

`Predictor` tokenises, plans length-sorted batches (`batching.plan_batches`), pads each to a
multiple of 8 and hands it to a backend (`backends.load_backend`): ``torch``, the run's
``merged/`` model, a plain transformers model with no LoRA side branches, under
``torch.inference_mode`` in bf16 where the hardware runs it faster; or ``onnx`` / ``openvino``, the run's
export (`agnews_lora.runtimes`), in fp32 on the CPU.  The training loop's validation goes through
the same planner and padding
(`batched_logits`).  Label names come from the model itself (``merged/config.json``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .backends import (  # noqa: F401 (re-export)
    check_backend,
    load_backend,
    prepare_for_inference,
    torch_logits,
)
from .batching import pad_ids, plan_batches
from .data import Encoded, encode_texts, read_columns  # noqa: F401 (encode_texts: re-export)
from .errors import UserError
from .runs import load_finished_run
from .scores import softmax  # noqa: F401 (re-export)

log = logging.getLogger(__name__)

PAD_MULTIPLE = (
    8  # no backward pass at inference: a finer shape grid costs little, padding costs every batch
)


def forward_overhead_tokens(device_type: str) -> int:
    """What one forward pass costs beyond its tokens, in padded tokens (CPU 64, GPU ~2,048)."""
    return 64 if device_type == "cpu" else 2048


def run_batches(
    logits_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    encoded: Encoded,
    indices: np.ndarray,
    num_labels: int,
    max_rows: int,
    pad_id: int,
    multiple: int,
    max_length: int | None,
    overhead_tokens: int,
    progress: bool = False,
) -> np.ndarray:
    """Logits (float32) of ``encoded`` rows ``indices``, in that order, through ``logits_fn``."""
    out = np.zeros((len(indices), num_labels), dtype=np.float32)
    batches = plan_batches(
        encoded.lengths[indices], max_rows, multiple, overhead_tokens, max_length
    )
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="predict", unit="batch", leave=False)
    for b in batches:
        input_ids, mask = pad_ids(
            [encoded.ids[i] for i in indices[b]], pad_id, multiple, max_length
        )
        out[b] = logits_fn(input_ids, mask)
    return out


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
    """Logits (float32) of a torch ``model`` for ``indices`` (default: all rows): the training
    loop's validation.  Batches as `Predictor`'s: at most ``batch_size`` rows, cut by
    `plan_batches` with ``min_tokens`` as the per-pass cost.  Returns ``(indices, logits)`` in the
    order of ``indices``.
    """
    idx = np.arange(len(encoded)) if indices is None else np.asarray(indices)
    num_labels = getattr(model, "module", model).config.num_labels  # DDP wraps .module
    was_training = model.training
    model.eval()
    try:
        out = run_batches(
            lambda ids, mask: torch_logits(model, ids, mask, device, autocast),
            encoded,
            idx,
            num_labels,
            batch_size,
            pad_id,
            multiple,
            max_length,
            min_tokens,
            progress,
        )
    finally:
        model.train(was_training)
    return idx, out


def model_label_names(
    model_dir: str | Path, expected: Sequence[str], run_dir: str | Path
) -> list[str]:
    """The label names of the model in ``model_dir`` (its config.json ``id2label``), checked against
    the run's ``data.label_names``: a mismatch would silently relabel every prediction."""
    path = Path(model_dir) / "config.json"
    try:
        id2label = json.loads(path.read_text(encoding="utf-8")).get("id2label") or {}
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (OSError, ValueError, AttributeError, TypeError):
        raise UserError(
            f"'{path}' is corrupt (no readable id2label); train the run again"
        ) from None
    expected = [str(n) for n in expected]
    if names != expected:
        raise UserError(
            f"run '{run_dir}': config.yaml data.label_names {expected} disagree with the "
            f"model's own labels {names} (merged/config.json id2label); restore config.yaml"
        )
    return names


class Predictor:
    """Classify texts with a finished run's merged model.

    >>> p = Predictor.from_run("runs/my-run")
    >>> p.predict(["Stocks rally as oil falls"])      # -> [2]
    >>> p.predict_proba("Stocks rally")               # -> array of shape (1, 4)

    ``backend``: anything with ``logits(input_ids, attention_mask)`` (see `agnews_lora.backends`).
    Safe to call from several threads at once.
    """

    pad_multiple = PAD_MULTIPLE

    def __init__(
        self,
        backend,
        tokenizer,
        label_names: Sequence[str],
        max_length: int,
        batch_size: int = 128,
        overhead_tokens: int | None = None,
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.label_names = [str(n) for n in label_names]
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = getattr(backend, "device", None)
        self.overhead_tokens = (
            overhead_tokens
            if overhead_tokens is not None
            else forward_overhead_tokens(getattr(device, "type", "cpu"))
        )
        self.summary: dict = {}
        self._tokenizer_lock = (
            threading.Lock()
        )  # a fast tokenizer is not safe from two threads at once

    @classmethod
    def from_model(
        cls,
        model,
        tokenizer,
        label_names: Sequence[str],
        max_length: int,
        batch_size: int = 128,
        precision: str = "auto",
        device: str | None = None,
        quantized: bool = False,
    ) -> Predictor:
        """A Predictor around an in-memory torch model (`TorchBackend`)."""
        from .backends import TorchBackend

        return cls(
            TorchBackend(model, precision, device, quantized),
            tokenizer,
            label_names,
            max_length,
            batch_size,
        )

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        batch_size: int = 128,
        precision: str = "auto",
        device: str | None = None,
        quantize: str | None = None,
        backend: str = "torch",
        threads: int | None = None,
    ) -> Predictor:
        """The run's model behind ``backend`` (`backends.BACKENDS`): "torch" runs ``merged/``,
        "onnx" / "openvino" the run's export (``quantize="int8"``: its int8 export), which must
        exist (`agnews-lora export`); ``threads``: the runtime's threads (not torch's)."""
        from transformers import AutoTokenizer

        check_backend(backend)
        cfg, summary = load_finished_run(run_dir)
        merged = Path(run_dir) / "merged"
        names = model_label_names(merged, cfg.data.label_names, run_dir)
        if quantize not in (None, "int8"):
            raise UserError(f"unknown quantisation '{quantize}' (supported: int8)")
        try:
            engine = load_backend(
                run_dir,
                backend,
                quantize == "int8",
                threads,
                precision,
                device,
                cfg.model.attn_implementation,
            )
            tokenizer = AutoTokenizer.from_pretrained(merged)
        except UserError:
            raise
        except Exception as e:
            raise UserError(
                f"run '{run_dir}': merged/ model cannot be loaded ({type(e).__name__}: "
                f"{str(e)[:120]}); train it again"
            ) from None
        p = cls(engine, tokenizer, names, cfg.model.max_length, batch_size)
        p.summary = summary
        return p

    # what the torch backend knows (other backends: sensible defaults)
    @property
    def model(self):
        return self.backend.model

    @property
    def device(self):
        import torch

        return getattr(self.backend, "device", torch.device("cpu"))

    @property
    def precision(self) -> str:
        return getattr(self.backend, "precision", "fp32")

    @property
    def quantized(self) -> bool:
        return bool(getattr(self.backend, "quantized", False))

    @property
    def backend_kind(self) -> str:
        """ "torch", "onnx", "openvino" (`backends.BACKENDS`), or "custom"."""
        return getattr(self.backend, "kind", "custom")

    def precision_context(self):
        return self.backend.precision_context()

    def logits(self, texts: Sequence[str] | str) -> tuple[np.ndarray, list[bool]]:
        """Float32 logits, one row per text, and whether each text was truncated."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, len(self.label_names)), np.float32), []
        with self._tokenizer_lock:
            encoded, truncated = encode_texts(self.tokenizer, texts, self.max_length)
        out = run_batches(
            self.backend.logits,
            encoded,
            np.arange(len(texts)),
            len(self.label_names),
            self.batch_size,
            self.pad_id,
            self.pad_multiple,
            self.max_length,
            self.overhead_tokens,
            progress=len(texts) > 20 * self.batch_size,
        )
        return out, truncated

    def predict_proba(self, texts: Sequence[str] | str) -> np.ndarray:
        return softmax(self.logits(texts)[0])

    def predict(self, texts: Sequence[str] | str) -> list[int]:
        return [int(i) for i in self.logits(texts)[0].argmax(axis=1)]

    def classify(self, texts: Sequence[str]) -> list[dict]:
        """Per text: label id, label name, probabilities by name, and whether it was truncated."""
        logits, truncated = self.logits(texts)
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model produced non-finite logits")
        probs = softmax(logits) if len(logits) else logits
        return [
            {
                "label": int(p.argmax()),
                "label_name": self.label_names[int(p.argmax())],
                "probabilities": {n: float(v) for n, v in zip(self.label_names, p)},
                "truncated": t,
            }
            for p, t in zip(probs, truncated)
        ]


def read_texts(path: str | Path, trust_pickle: bool = False) -> list[str]:
    """Texts to classify from CSV / JSONL / Parquet / a pickled datasets.Dataset with a `text` column."""
    from .data import to_table

    cols = read_columns(path, trust_pickle)
    cols.pop("label", None)  # labels, if present, are not needed to predict
    return to_table(cols, ["_"], f"'{path}'", require_labels=False).texts


def check_output(
    path: str | Path, overwrite: bool = False, input_path: str | Path | None = None
) -> Path:
    """``path`` if a submission may be written there: its folder exists, it is not a folder, and it
    is not an existing file (not even ``input_path``) unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"--output '{path}' is a directory; name a file, e.g. '{path / 'submission.csv'}'"
        )
    if not path.parent.is_dir():
        raise UserError(f"output folder '{path.parent}' does not exist")
    if path.exists() and not overwrite:
        same = input_path is not None and Path(input_path).exists() and path.samefile(input_path)
        what = "is the --input file" if same else "already exists"
        raise UserError(f"--output '{path}' {what}; pass --overwrite to replace it")
    return path


def write_submission(
    path: str | Path,
    preds: Sequence[int],
    probs: np.ndarray | None = None,
    label_names: list[str] | None = None,
    overwrite: bool = False,
) -> None:
    """Kaggle-style ``ID,Label`` CSV (ID = row position); optional extra columns after those.

    Written to a temporary file beside ``path`` and renamed over it; nothing is left on failure.
    """
    path = check_output(path, overwrite)
    header = ["ID", "Label"]
    if label_names is not None:
        header.append("LabelName")
    if probs is not None:
        names = label_names or [str(i) for i in range(probs.shape[1])]
        header += [f"p_{n}" for n in names]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
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
    except OSError as e:
        raise UserError(f"cannot write '{path}': {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
