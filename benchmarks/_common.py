"""Helpers shared by the benchmarks: machine facts, peak matmul FLOP/s, model FLOP counts.

FLOP accounting (what "model FLOP utilisation" divides by the measured peak):

* forward, per real (non-pad) token: ``2 * N_matmul`` where ``N_matmul`` counts the weights of
  every encoder Linear (q, k, v, attention output, FFN in and out) plus the LoRA A/B matrices;
* forward attention, per sequence of real length ``T`` and per layer: ``4 * T**2 * d``
  (scores ``Q K^T`` and the weighted sum ``P V``);
* backward with a *frozen* base and LoRA adapters: the base Linears need only their input
  gradients (``1x`` forward; layer 0's q/k/v not even those, their input is the frozen
  embedding output), attention needs ``2x`` its forward, LoRA matrices and the trained head
  need input and weight gradients (``2x``).  A fully trained model would be ``3x`` forward; a
  frozen base with LoRA is about ``2x``;
* the classifier head runs on the first token only; embeddings, LayerNorm, GELU, softmax and
  the optimizer are not counted (they are not matmul work).

Padding never counts: FLOPs spent on pad tokens are waste, which is the point.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    import torch

    from agnews_lora import devices

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = devices.cpu_flags()
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": [f for f in ("amx_bf16", "avx512_bf16") if f in flags],
        # what train.precision 'auto' picks on this CPU, and why (the measured bf16 probe, see devices.py)
        "auto_cpu_precision": devices.resolve_precision("auto", "cpu"),
        "auto_cpu_precision_reason": devices.precision_reason("auto", "cpu"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
            if k in os.environ
        },
    }


def measure_peak_flops(
    dtype_name: str, sizes=(1024, 2048, 3072), reps: int = 5, device: str = "cpu"
) -> dict:
    """Peak dense matmul FLOP/s of one dtype: large square ``a @ b``; max over sizes of the median over reps."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    per_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        per_size[str(n)] = 2 * n**3 / statistics.median(times)
    return {
        "dtype": dtype_name,
        "flops": max(per_size.values()),
        "per_size": per_size,
        "reps": reps,
    }


@dataclass
class FlopModel:
    """Just enough of an encoder's shape to count its matmul FLOPs."""

    hidden: int
    layers: int
    intermediate: int
    num_labels: int
    lora_r: int
    lora_modules_per_layer: int  # e.g. 2 for query + value
    lora_layers: int
    head_dense: bool  # RoBERTa-style head (dense d x d + out_proj) or BERT pooler + classifier

    @classmethod
    def from_model(cls, hf_config, lora) -> FlopModel:
        d, layers = hf_config.hidden_size, hf_config.num_hidden_layers
        per_layer = sum(1 for m in lora.target_modules if m in ("query", "key", "value", "dense"))
        return cls(
            hidden=d,
            layers=layers,
            intermediate=hf_config.intermediate_size,
            num_labels=hf_config.num_labels,
            lora_r=lora.r,
            lora_modules_per_layer=per_layer,
            lora_layers=len(lora.layers) if lora.layers is not None else layers,
            head_dense=True,  # both heads do one d x d matmul on the first token (RoBERTa dense / BERT pooler)
        )

    @property
    def linear_params_per_layer(self) -> int:
        d, f = self.hidden, self.intermediate
        return 4 * d * d + 2 * d * f

    @property
    def lora_params(self) -> int:
        return self.lora_layers * self.lora_modules_per_layer * self.lora_r * 2 * self.hidden

    @property
    def head_params(self) -> int:
        return self.hidden * self.hidden + self.hidden * self.num_labels

    def forward_flops(self, lengths) -> float:
        """Forward matmul FLOPs for sequences of real lengths ``lengths``."""
        lengths = np.asarray(lengths, dtype=np.float64)
        tokens = lengths.sum()
        linear = 2.0 * (self.layers * self.linear_params_per_layer + self.lora_params) * tokens
        attention = 4.0 * self.hidden * self.layers * float((lengths**2).sum())
        head = 2.0 * self.head_params * len(lengths)
        return linear + attention + head

    def train_flops(self, lengths) -> float:
        """Forward + backward matmul FLOPs of a LoRA step on a frozen base (see module docstring)."""
        lengths = np.asarray(lengths, dtype=np.float64)
        tokens = lengths.sum()
        d = self.hidden
        base_fwd = 2.0 * self.layers * self.linear_params_per_layer * tokens
        base_bwd = base_fwd - 2.0 * 3 * d * d * tokens  # layer 0's q/k/v need no input gradient
        attention_fwd = 4.0 * d * self.layers * float((lengths**2).sum())
        lora_fwd = 2.0 * self.lora_params * tokens
        head_fwd = 2.0 * self.head_params * len(lengths)
        return base_fwd + base_bwd + 3.0 * attention_fwd + 3.0 * lora_fwd + 3.0 * head_fwd

    def to_dict(self) -> dict:
        return asdict(self)


def summarise_lengths(lengths: np.ndarray) -> dict:
    lengths = np.asarray(lengths)
    return {
        "mean": round(float(lengths.mean()), 1),
        "median": float(np.median(lengths)),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "min": int(lengths.min()),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
