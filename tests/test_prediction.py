"""The Predictor's precision handling: a bf16 model stored in bf16 throughout, close to fp32."""

import numpy as np
import torch

from agnews_lora.prediction import Predictor
from agnews_lora.tiny import synthetic_rows


def test_bf16_predictor_stores_the_whole_model_in_bf16_and_agrees_with_fp32(trained_run):
    fp32 = Predictor.from_run(trained_run, precision="fp32")
    bf16 = Predictor.from_run(trained_run, precision="bf16")
    assert fp32.model.dtype == torch.float32 and all(p.dtype == torch.float32 for p in fp32.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())  # LayerNorm and embeddings too
    assert not any(p.requires_grad for p in bf16.model.parameters())
    assert bf16.precision_context().__class__.__name__ == "nullcontext"  # no autocast around a bf16 model
    texts = [t for t, _ in synthetic_rows(200, seed=5)]
    a, _ = fp32.logits(texts)
    b, _ = bf16.logits(texts)
    assert b.dtype == np.float32 and a.shape == b.shape
    assert np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max())  # bf16 rounding, not a different model
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97
