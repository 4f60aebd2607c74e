"""`lora.head`: the classifier head trained in full, or only its output projection."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    MPNetConfig,
    RobertaConfig,
)

from agnews_lora.budget import check_budget, count_params
from agnews_lora.config import Config, LoraSettings, apply_overrides, load_config
from agnews_lora.errors import UserError
from agnews_lora.modeling import (
    apply_lora,
    load_adapter_model,
    load_base_model,
    meta_peft_model,
)
from agnews_lora.training import plan_counts, train


def _meta_counts(config, **lora):
    config = config.__class__.from_dict(config.to_dict())
    config.num_labels = 4
    return count_params(meta_peft_model(config, LoraSettings(**lora)))


@pytest.mark.parametrize(
    "config, qv", [(RobertaConfig(), ["query", "value"]), (MPNetConfig(), ["q", "v"])]
)
def test_out_proj_head_trains_3076_params_on_a_768_hidden_model(config, qv):
    full = _meta_counts(config, r=8, target_modules=qv)
    cheap = _meta_counts(config, r=8, target_modules=qv, head="out_proj")
    assert full.head == 768 * 768 + 768 + 768 * 4 + 4 == 593_668
    assert cheap.head == 768 * 4 + 4 == 3_076
    assert cheap.lora == full.lora == 12 * 2 * 8 * (768 + 768)
    assert cheap.total == full.total  # the frozen dense is still part of the saved model
    assert cheap.other == 0


def test_out_proj_equals_full_for_a_single_linear_head():
    full = _meta_counts(BertConfig(), r=4, target_modules=["query", "value"])
    cheap = _meta_counts(BertConfig(), r=4, target_modules=["query", "value"], head="out_proj")
    assert cheap == full and full.head == 768 * 4 + 4


def test_plan_counts_and_the_budget_follow_the_head_choice(tmp_path):
    RobertaConfig().save_pretrained(tmp_path)
    sets = [f"model.name_or_path={tmp_path}", "lora.r=16", "lora.target_modules=[query,key,value]"]
    full = plan_counts(apply_overrides(Config(), sets))
    cheap = plan_counts(apply_overrides(Config(), [*sets, "lora.head=out_proj"]))
    assert full.trainable > 1_000_000 >= cheap.trainable == 12 * 3 * 16 * 1536 + 3_076
    check_budget(cheap, 1_000_000)
    with pytest.raises(UserError, match="over budget"):
        check_budget(full, 1_000_000)
    with pytest.raises(UserError, match="lora.head"):
        apply_overrides(Config(), ["lora.head=dense"])


@pytest.fixture(scope="module")
def pooler_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny RoBERTa checkpoint with a (random, seeded) pooler, like roberta-base / MPNet."""
    from transformers import RobertaModel

    d = tmp_path_factory.mktemp("tiny-pooler") / "model"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.safetensors").unlink()
    torch.manual_seed(7)
    base = RobertaModel.from_pretrained(tiny_model_dir, add_pooling_layer=True)
    with torch.no_grad():
        base.pooler.dense.weight.normal_(0, 0.3)
        base.pooler.dense.bias.normal_(0, 0.3)
    base.save_pretrained(d)
    return d


def _pooler(model_dir):
    from safetensors.torch import load_file

    w = load_file(model_dir / "model.safetensors")
    return w["pooler.dense.weight"], w["pooler.dense.bias"]


def _head_copy(peft_model):
    return peft_model.base_model.model.classifier.modules_to_save["default"]


def test_frozen_dense_starts_from_the_pooler_or_identity(pooler_model_dir, tiny_model_dir):
    cfg = apply_overrides(
        Config(), [f"model.name_or_path={pooler_model_dir}", "lora.head=out_proj"]
    )
    head = _head_copy(apply_lora(load_base_model(cfg), cfg.lora))
    weight, bias = _pooler(pooler_model_dir)
    assert torch.equal(head.dense.weight, weight) and torch.equal(head.dense.bias, bias)
    assert not head.dense.weight.requires_grad and head.out_proj.weight.requires_grad

    cfg = apply_overrides(Config(), [f"model.name_or_path={tiny_model_dir}", "lora.head=out_proj"])
    head = _head_copy(apply_lora(load_base_model(cfg), cfg.lora))  # a checkpoint without a pooler
    assert (
        torch.equal(head.dense.weight, torch.eye(head.dense.in_features))
        and not head.dense.bias.any()
    )


def test_out_proj_run_reloads_and_merges_exactly(pooler_model_dir, data_dir, tmp_path):
    """Training moves LoRA and out_proj, not the frozen dense; adapter/ and merged/ reproduce it."""
    from agnews_lora.data import encode, load_splits
    from agnews_lora.evaluation import classification_metrics
    from agnews_lora.modeling import load_tokenizer
    from agnews_lora.prediction import batched_logits

    sets = tiny_overrides(
        pooler_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{
            "lora.head": "out_proj",
            "train.precision": "fp32",
            "train.max_steps": 40,
            "run_name": "out-proj",
        },
    )
    cfg = load_config(None, sets)
    run = train(cfg, progress=False)
    assert run.summary["params"]["head"] == 32 * 4 + 4

    adapter_model = load_adapter_model(run.dir, cfg)
    head = _head_copy(adapter_model)
    weight, bias = _pooler(pooler_model_dir)
    assert torch.equal(head.dense.weight, weight) and torch.equal(head.dense.bias, bias)
    fresh_out = _head_copy(apply_lora(load_base_model(cfg), cfg.lora)).out_proj.weight
    assert not torch.equal(head.out_proj.weight, fresh_out)  # the output projection did train

    merged = AutoModelForSequenceClassification.from_pretrained(run.dir / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert torch.equal(merged.classifier.dense.weight, weight)
    val = encode(
        load_splits(cfg)["validation"], load_tokenizer(str(pooler_model_dir)), cfg.model.max_length
    )
    _, a = batched_logits(adapter_model, val, 64, 1, "cpu", max_length=cfg.model.max_length)
    _, m = batched_logits(merged, val, 64, 1, "cpu", max_length=cfg.model.max_length)
    np.testing.assert_allclose(a, m, atol=1e-5)
    best = run.summary["best"]
    metrics = classification_metrics(val.labels, a)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"])
    assert metrics["loss"] == pytest.approx(best["val_loss"], abs=1e-5)


@pytest.mark.parametrize(
    "name, trainable",
    [
        ("offline-mpnet", 888_580),
        ("offline-mpnet-seed-notebook", 814_852),
        ("offline-mpnet-seed-script", 741_124),
    ],
)
def test_mpnet_recipes_fit_the_budget_on_the_same_rows(name, trainable, tmp_path):
    """MPNet's module names (q, k, v) match, the budget holds, all hold out the same test rows."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / f"{name}.yaml")
    assert cfg.model.name_or_path == "offline:all-mpnet-base-v2"
    assert (cfg.data.train_file, cfg.data.test_size, cfg.data.split_seed) == (
        "../shared/data/agnews/train.csv",
        0.1,
        42,
    )
    MPNetConfig(vocab_size=30527).save_pretrained(
        tmp_path
    )  # all-mpnet-base-v2's sizes, without its weights
    counts = plan_counts(apply_overrides(cfg, [f"model.name_or_path={tmp_path}"]))
    assert counts.trainable == trainable and counts.head == 593_668
    check_budget(counts, cfg.budget.max_trainable_params)
