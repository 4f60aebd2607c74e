"""Shared offline fixtures: a tiny RoBERTa saved like roberta-base, synthetic AG-News-like data, a trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_AGNEWS = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"


def tiny_overrides(model_dir: Path, train_csv: Path, tmp: Path, **extra) -> list[str]:
    """--set overrides for a fast, deterministic tiny run (about a second of training)."""
    sets = {
        "model.name_or_path": str(model_dir),
        "model.max_length": 64,
        "data.train_file": str(train_csv),
        "data.val_size": 0.1,
        "data.cache_dir": str(tmp / "cache"),
        "train.max_steps": 120,
        "train.eval_every": 40,
        "train.log_every": 20,
        "train.per_device_batch_size": 16,
        "train.eval_batch_size": 64,
        "train.learning_rate": 1e-2,
        "output_dir": str(tmp / "runs"),
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from agnews_lora.tiny import build_tiny_roberta

    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta") / "model")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """train.csv (800 labelled rows), test.csv (200 labelled), unlabelled.csv (50 texts)."""
    from agnews_lora.tiny import synthetic_rows, write_csv

    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", synthetic_rows(800, seed=1))
    write_csv(d / "test.csv", synthetic_rows(200, seed=2))
    write_csv(d / "unlabelled.csv", synthetic_rows(50, seed=3), with_labels=False)
    return d


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, data_dir, tmp_path_factory) -> Path:
    """A finished tiny run (train.csv, test.csv as its test split); treat it as read-only."""
    from agnews_lora.config import load_config
    from agnews_lora.training import train

    tmp = tmp_path_factory.mktemp("trained")
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            data_dir / "train.csv",
            tmp,
            **{"data.test_file": str(data_dir / "test.csv"), "run_name": "tiny-run"},
        ),
    )
    return train(cfg, progress=False).dir
