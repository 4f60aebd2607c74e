"""Fast CPU dropout: right keep probability and scale, reproducible, same model outside training."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from agnews_lora.config import LoraSettings, load_config
from agnews_lora.fast_dropout import (
    ATTENTION_NAME,
    FastDropout,
    fast_dropout,
    keep_mask,
    restore_dropout,
    use_fast_dropout,
)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_keep_probability_and_scale(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    # 1e6 Bernoulli draws: the standard error of the kept fraction is below 5e-4
    assert abs(keep.float().mean().item() - (1 - p)) < 2.5e-3
    assert abs(scale - 1 / (1 - p)) < 1e-4 / (1 - p)
    # rows and columns are not correlated with each other (no repeated stream)
    assert not torch.equal(keep[0], keep[1]) and not torch.equal(keep[:, 0], keep[:, 1])


def test_expectation_and_gradient_match_dropout():
    torch.manual_seed(1)
    x = torch.randn(400, 500, requires_grad=True)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    _, scale = keep_mask((1,), 0.1)
    torch.testing.assert_close(
        y[kept], x[kept] * scale
    )  # kept values are scaled, the rest are zero
    assert abs(y.detach().mean().item() - x.detach().mean().item()) < 0.01  # E[dropout(x)] = x
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * scale)  # d/dx = mask * scale
    assert fast_dropout(x, 0.0) is x


def test_masks_follow_torch_seed():
    x = torch.ones(64, 64)
    torch.manual_seed(7)
    a = fast_dropout(x, 0.3)
    b = fast_dropout(x, 0.3)
    torch.manual_seed(7)
    a2 = fast_dropout(x, 0.3)
    assert torch.equal(a, a2) and not torch.equal(a, b)


def test_module_is_identity_in_eval_and_for_bf16_keeps_dtype():
    m = FastDropout(0.5)
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    assert torch.equal(m.eval()(x), x)
    out = m.train()(x)
    assert out.dtype == torch.bfloat16 and (out == 0).any()


def _tiny_peft(tiny_model_dir, dropout=0.1):
    from transformers import AutoModelForSequenceClassification

    from agnews_lora.modeling import apply_lora

    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=4, attn_implementation="sdpa"
    )
    return apply_lora(
        model, LoraSettings(r=4, alpha=8, dropout=dropout, target_modules=["query", "value"])
    )


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 200, (4, 24), generator=g)
    mask = torch.ones(4, 24, dtype=torch.long)
    mask[1, 15:] = 0  # padding must be masked in the attention the same way
    mask[3, 5:] = 0
    return ids, mask


def test_swapped_model_gives_identical_logits_in_eval_and_matches_sdpa_without_dropout(
    tiny_model_dir,
):
    model = _tiny_peft(tiny_model_dir).eval()
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    changed = use_fast_dropout(model)
    assert changed["attention_from"] == "sdpa" and changed["dropout_modules"] > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert model.get_base_model().config._attn_implementation == ATTENTION_NAME
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, attention_mask=mask).logits, ref
        )  # eval: SDPA, untouched
        for m in (
            model.modules()
        ):  # hidden, LoRA and attention dropout (attention reads its module's `dropout.p`)
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        model.train()  # training path: plain matmuls; with every p = 0 it is the same function
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-5, rtol=1e-5
        )
    restore_dropout(model, changed)
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_training_forward_is_reproducible_and_drops(tiny_model_dir):
    model = _tiny_peft(tiny_model_dir)
    use_fast_dropout(model)
    model.train()
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(11)
    a = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.manual_seed(11)
    b = model(input_ids=ids, attention_mask=mask, labels=labels)
    c = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.equal(a.logits, b.logits) and not torch.equal(a.logits, c.logits)
    a.loss.backward()
    grads = [
        p.grad for n, p in model.named_parameters() if "lora_B" in n
    ]  # lora_A's start at 0: B = 0 at init
    assert grads and all(
        g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads
    )


def test_training_run_records_dropout_and_exports_plain_model(tiny_model_dir, data_dir, tmp_path):
    from agnews_lora.training import train

    fast = train(
        load_config(
            None,
            tiny_overrides(
                tiny_model_dir,
                data_dir / "train.csv",
                tmp_path,
                **{"train.max_steps": 40, "train.log_every": 10, "run_name": "fast"},
            ),
        ),
        progress=False,
    )
    torch_run = train(
        load_config(
            None,
            tiny_overrides(
                tiny_model_dir,
                data_dir / "train.csv",
                tmp_path,
                **{
                    "train.max_steps": 40,
                    "train.log_every": 10,
                    "run_name": "torch",
                    "train.fast_cpu_dropout": "false",
                },
            ),
        ),
        progress=False,
    )
    assert (
        fast.summary["dropout"].startswith("fast-cpu") and torch_run.summary["dropout"] == "torch"
    )
    merged_cfg = json.loads((fast.dir / "merged" / "config.json").read_text())
    assert ATTENTION_NAME not in json.dumps(merged_cfg)  # the export is a plain transformers model
    # both learn (same data, same steps): neither dropout is broken
    for run in (fast, torch_run):
        rows = [json.loads(line) for line in (run.dir / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if r["split"] == "train"]
        assert np.isfinite(losses).all() and losses[-1] < losses[0]
