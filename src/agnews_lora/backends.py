"""Inference backends: what turns one padded batch of token ids into logits.

A backend is anything with ``logits(input_ids, attention_mask) -> np.ndarray``: int64 arrays of
shape ``(rows, width)`` in, float32 logits of shape ``(rows, num_labels)`` out.  `Predictor` does
the rest (tokenising, batching, padding, softmax, labels).  `load_backend` makes any of `BACKENDS`
for a finished run: `TorchBackend` on ``merged/``, or the ONNX Runtime / OpenVINO backend of its
export (`agnews_lora.runtimes`).  A backend must be safe to call from several threads at once
(``serve --workers``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .devices import autocast_context, resolve_precision
from .errors import UserError
from .runtimes import BACKENDS, check_backend, open_export  # noqa: F401 (BACKENDS: re-export)


class Backend(Protocol):
    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


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


def torch_logits(
    model,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    device,
    autocast=contextlib.nullcontext,
) -> np.ndarray:
    """One forward pass of a transformers classifier under ``inference_mode``; float32 logits."""
    with torch.inference_mode(), autocast():
        out = model(
            input_ids=torch.from_numpy(input_ids).to(device),
            attention_mask=torch.from_numpy(attention_mask).to(device),
        ).logits
    return out.float().cpu().numpy()


class TorchBackend:
    """A transformers sequence classifier in eval mode, on ``device``, at ``precision``."""

    kind = "torch"

    def __init__(
        self, model, precision: str = "auto", device: str | None = None, quantized: bool = False
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.quantized = quantized
        self.precision = "fp32" if quantized else resolve_precision(precision, self.device.type)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        precision: str = "auto",
        device: str | None = None,
        quantize: str | None = None,
        attn_implementation: str | None = None,
    ):
        from transformers import AutoModelForSequenceClassification

        if quantize not in (None, "int8"):
            raise UserError(f"unknown quantisation '{quantize}' (supported: int8)")
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, attn_implementation=attn_implementation, dtype=torch.float32
        )  # precision: below
        if quantize == "int8":
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
            device = "cpu"
        backend = cls(model, precision, device, quantized=quantize == "int8")
        prepare_for_inference(backend.model, backend.precision)
        return backend

    def precision_context(self):
        """Autocast for a model kept in fp32; nothing for one stored in bf16
        (`prepare_for_inference`)."""
        if self.precision == "fp32" or self.model.dtype == torch.bfloat16:
            return contextlib.nullcontext()
        return autocast_context(self.precision, self.device.type)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return torch_logits(
            self.model, input_ids, attention_mask, self.device, self.precision_context
        )


def load_backend(
    run_dir: str | Path,
    name: str = "torch",
    int8: bool = False,
    threads: int | None = None,
    precision: str = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
):
    """The backend ``name`` (one of `BACKENDS`) of the finished run in ``run_dir``.

    * ``torch``: ``merged/`` at ``precision`` on ``device``; ``int8``: dynamically quantised
      (CPU). ``threads`` is not used (torch's threads are the process's: ``torch.set_num_threads``).
    * ``onnx`` / ``openvino``: the run's export ``RUN_DIR/export/<name>[-int8]/`` (never made
      here: a missing one is a UserError naming the `agnews-lora export` command), fp32, on the
      CPU, ``threads`` intra-op threads (None: the runtime's default).
    """
    check_backend(name)
    if name == "torch":
        quantize = "int8" if int8 else None
        merged = Path(run_dir) / "merged"
        return TorchBackend.from_pretrained(
            merged, precision, device, quantize, attn_implementation
        )
    if precision not in ("auto", "fp32"):
        raise UserError(
            f"the {name} backend runs in fp32; --precision {precision} needs --backend torch"
        )
    if device not in (None, "cpu"):
        raise UserError(
            f"the {name} backend runs on the CPU; device '{device}' needs --backend torch"
        )
    return open_export(run_dir, name, int8, threads)


def variant_suffix(name: str, int8: bool) -> str:
    """What an evaluation's folder name gets for a backend: "", "-int8", "-onnx", "-onnx-int8"..."""
    return ("" if name == "torch" else f"-{name}") + ("-int8" if int8 else "")
