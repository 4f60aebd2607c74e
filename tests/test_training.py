"""Behaviour of the training loop and of what it saves."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from agnews_lora.config import load_config
from agnews_lora.runs import read_metrics
from agnews_lora.training import train


def _train(tiny_model_dir, data_dir, tmp_path, **extra):
    cfg = load_config(
        None, tiny_overrides(tiny_model_dir, data_dir / "train.csv", tmp_path, **extra)
    )
    return train(cfg, progress=False)


def test_loss_falls_and_accuracy_beats_chance(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    train_loss = [r["loss"] for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    assert train_loss[-1] < 0.8 * train_loss[0]
    assert val[-1]["loss"] < val[0]["loss"] or max(r["accuracy"] for r in val) > val[0]["accuracy"]
    assert max(r["accuracy"] for r in val) > 0.5  # 4 balanced classes: chance is 0.25


def test_reloaded_adapter_and_merged_model_reproduce_the_trained_model(
    tiny_model_dir, data_dir, tmp_path
):
    """fp32 run: the validation loss logged during training is reproduced by the saved adapter and by merged/."""
    from transformers import AutoModelForSequenceClassification

    from agnews_lora.data import encode, load_splits
    from agnews_lora.evaluation import classification_metrics
    from agnews_lora.modeling import load_adapter_model, load_tokenizer
    from agnews_lora.prediction import batched_logits

    run = _train(
        tiny_model_dir, data_dir, tmp_path, **{"train.precision": "fp32", "run_name": "fp32"}
    )
    best = run.summary["best"]
    cfg = run.config
    val = encode(
        load_splits(cfg)["validation"], load_tokenizer(str(tiny_model_dir)), cfg.model.max_length
    )

    adapter_model = load_adapter_model(run.dir, cfg)
    merged_model = AutoModelForSequenceClassification.from_pretrained(run.dir / "merged")
    assert not any(
        "lora" in n for n, _ in merged_model.named_parameters()
    )  # plain transformers model, no PEFT
    _, a = batched_logits(adapter_model, val, 64, 1, "cpu", max_length=cfg.model.max_length)
    _, m = batched_logits(merged_model, val, 64, 1, "cpu", max_length=cfg.model.max_length)
    np.testing.assert_allclose(a, m, atol=1e-4)
    metrics = classification_metrics(val.labels, a)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"])
    assert metrics["loss"] == pytest.approx(best["val_loss"], abs=1e-5)


def test_classifier_head_is_trained_and_saved_with_the_adapter(trained_run):
    from safetensors.torch import load_file

    weights = load_file(trained_run / "adapter" / "adapter_model.safetensors")
    head = [k for k in weights if "classifier" in k]
    assert head and not any("lora" in k for k in head)
    assert any("lora_A" in k for k in weights) and any("lora_B" in k for k in weights)
    assert all(
        torch.count_nonzero(weights[k]) > 0 for k in weights if "lora_B" in k
    )  # B starts at zero: it trained


def test_best_checkpoint_is_kept_and_same_seed_gives_same_run(tiny_model_dir, data_dir, tmp_path):
    a = _train(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{"run_name": "a", "train.eval_every": 20, "train.precision": "fp32"},
    )
    b = _train(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{"run_name": "b", "train.eval_every": 20, "train.precision": "fp32"},
    )
    val = [r for r in read_metrics(a.dir / "metrics.jsonl") if r["split"] == "validation"]
    best = max(val, key=lambda r: r["accuracy"])  # first maximum wins
    assert (
        a.summary["best"]["step"] == best["step"]
        and a.summary["best"]["val_accuracy"] == best["accuracy"]
    )
    assert read_metrics(a.dir / "metrics.jsonl") == read_metrics(b.dir / "metrics.jsonl") or all(
        x["step"] == y["step"] and abs(x["loss"] - y["loss"]) < 1e-6
        for x, y in zip(
            read_metrics(a.dir / "metrics.jsonl"), read_metrics(b.dir / "metrics.jsonl")
        )
    )


def test_early_stopping_stops_after_patience(tiny_model_dir, data_dir, tmp_path):
    run = _train(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{
            "run_name": "es",
            "train.learning_rate": 1e-7,
            "train.max_steps": 200,
            "train.eval_every": 10,
            "train.early_stopping_patience": 2,
        },
    )
    assert run.summary["stopped_early"] and run.summary["steps"] < 200
    val = [r for r in read_metrics(run.dir / "metrics.jsonl") if r["split"] == "validation"]
    assert len(val) >= 3 and run.summary["steps"] == val[-1]["step"]


def test_tokenisation_is_cached(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from agnews_lora import data
    from agnews_lora.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    table = data.read_table(data_dir / "train.csv", ["World", "Sports", "Business", "Sci/Tech"])
    first = data.encode(table, tok, 64, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("tokens-*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("re-tokenised although cached")

    monkeypatch.setattr(tok, "__call__", boom, raising=False)
    monkeypatch.setattr(type(tok), "__call__", boom)
    second = data.encode(table, tok, 64, str(tmp_path / "cache"))
    assert all(np.array_equal(x, y) for x, y in zip(first.ids, second.ids))


def test_validation_split_is_stratified_seeded_and_disjoint(tiny_model_dir, data_dir, tmp_path):
    from agnews_lora.data import load_splits

    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            data_dir / "train.csv",
            tmp_path,
            **{"data.val_size": 80, "data.test_size": 0.25},
        ),
    )
    s1, s2 = load_splits(cfg), load_splits(cfg)
    assert len(s1["validation"]) == 80 and np.bincount(s1["validation"].labels).tolist() == [
        20,
        20,
        20,
        20,
    ]
    assert s1["validation"].texts == s2["validation"].texts
    from agnews_lora.data import load_test_split

    test = load_test_split(cfg)
    assert len(test) == 200 and len(s1["train"]) == 800 - 200 - 80
    # a partition of the file's rows: every text as often across the three splits as in the file (a row in two
    # splits would be counted twice)
    from collections import Counter

    from agnews_lora.config import AG_NEWS_LABELS
    from agnews_lora.data import read_table

    rows = read_table(data_dir / "train.csv", AG_NEWS_LABELS)
    assert Counter(s1["train"].texts) + Counter(s1["validation"].texts) + Counter(
        test.texts
    ) == Counter(rows.texts)


def test_summary_records_what_was_used(trained_run):
    s = json.loads((trained_run / "summary.json").read_text())
    assert s["precision"] in ("bf16", "fp32") and s["device"] == (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    assert s["timings"]["train_seconds"] > 0 and s["timings"]["train_samples_per_s"] > 0
    assert s["steps"] == 120 and s["train_rows"] + s["validation_rows"] == 800
    # precision 'auto' on a CPU says why it chose what it chose
    from agnews_lora.devices import BF16_MIN_SPEEDUP

    if torch.cuda.is_available():
        assert s["precision_reason"] is None
    elif "measured" in s["precision_reason"]:
        speedup = float(s["precision_reason"].split("measured ")[1].split("x")[0])
        if abs(speedup - BF16_MIN_SPEEDUP) > 0.1:  # the log rounds to 0.1x
            assert (s["precision"] == "bf16") == (speedup > BF16_MIN_SPEEDUP)
    else:
        assert s["precision_reason"] == "auto: this CPU has no bf16 instructions"
        assert s["precision"] == "fp32"


def test_bf16_stored_frozen_base_changes_nothing_under_autocast(tiny_model_dir):
    """Storing the frozen Linear weights in bf16 once gives the same loss and LoRA gradients, bit for bit."""
    from agnews_lora.devices import cast_frozen_linears
    from agnews_lora.modeling import apply_lora, load_base_model

    cfg = load_config(
        None,
        [f"model.name_or_path={tiny_model_dir}", "lora.target_modules=[query, key, value, dense]"],
    )
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(5, 200, (4, 24)),
        "attention_mask": torch.ones(4, 24, dtype=torch.long),
        "labels": torch.tensor([0, 1, 2, 3]),
    }

    def loss_and_grads(cast: bool):
        torch.manual_seed(1)
        model = apply_lora(load_base_model(cfg), cfg.lora).eval()  # eval: no dropout, same numbers
        n = cast_frozen_linears(model) if cast else 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
        return loss.detach(), grads, n, dtypes

    ref_loss, ref_grads, _, _ = loss_and_grads(False)
    loss, grads, n_cast, trainable_dtypes = loss_and_grads(True)
    assert n_cast > 0 and trainable_dtypes == {torch.float32}  # base cast, LoRA + head stay fp32
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert torch.equal(grads[k], ref_grads[k]), k


def test_bf16_run_exports_an_fp32_merged_model_equal_to_base_plus_adapter(
    tiny_model_dir, data_dir, tmp_path
):
    """A bf16 run keeps its frozen base in bf16 while training; merged/ is still the exact fp32 merge."""
    from transformers import AutoModelForSequenceClassification

    from agnews_lora.modeling import load_adapter_model

    run = _train(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{"train.precision": "bf16", "run_name": "bf16", "train.max_steps": 20},
    )
    assert run.summary["precision"] == "bf16"
    saved = AutoModelForSequenceClassification.from_pretrained(run.dir / "merged").state_dict()
    expected = load_adapter_model(run.dir, run.config).merge_and_unload().state_dict()
    assert {t.dtype for t in saved.values() if t.is_floating_point()} == {torch.float32}
    assert saved.keys() == expected.keys()
    for k in saved:
        assert torch.equal(saved[k], expected[k]), k


def test_checkpoint_saved_in_fp16_trains_with_fp32_weights(tiny_model_dir, data_dir, tmp_path):
    """transformers 5 loads a checkpoint in the dtype it was saved in; AdamW on fp16 LoRA weights gives NaN."""
    import shutil

    from transformers import AutoModelForMaskedLM

    fp16_dir = tmp_path / "fp16-model"
    shutil.copytree(tiny_model_dir, fp16_dir)
    AutoModelForMaskedLM.from_pretrained(tiny_model_dir).half().save_pretrained(fp16_dir)
    from agnews_lora.modeling import load_base_model

    cfg = load_config(None, tiny_overrides(fp16_dir, data_dir / "train.csv", tmp_path))
    assert {p.dtype for p in load_base_model(cfg).parameters()} == {torch.float32}
    run = _train(fp16_dir, data_dir, tmp_path, **{"run_name": "fp16", "train.max_steps": 40})
    losses = [r["loss"] for r in read_metrics(run.dir / "metrics.jsonl") if r["split"] == "train"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_diverging_run_stops_with_a_clear_error(tiny_model_dir, data_dir, tmp_path):
    from agnews_lora.errors import UserError

    with pytest.raises(
        UserError,
        match=r"training diverged: the training loss is (nan|inf) at step 10; lower train.learning_rate",
    ):
        _train(
            tiny_model_dir,
            data_dir,
            tmp_path,
            **{
                "run_name": "boom",
                "train.learning_rate": 1e30,
                "train.warmup_ratio": 0,
                "train.log_every": 10,
            },
        )
    assert not (tmp_path / "runs" / "boom" / "summary.json").exists()


def test_every_module_trains_from_the_first_step_and_after_each_evaluation(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    """from_pretrained leaves the base in eval mode (no dropout) under PEFT's wrapper, which is in train mode."""
    from agnews_lora.training import Loop

    modes, original = [], Loop.train_step

    def recording_step(self):
        out = original(self)
        modes.append(all(m.training for m in self.model.modules()))
        return out

    monkeypatch.setattr(Loop, "train_step", recording_step)
    _train(
        tiny_model_dir,
        data_dir,
        tmp_path,
        **{"run_name": "modes", "train.max_steps": 50, "train.eval_every": 20},
    )
    assert len(modes) == 50 and all(modes)


def test_setup_fit_export_is_the_seam_and_on_eval_sees_every_evaluation(
    tiny_model_dir, data_dir, tmp_path
):
    from agnews_lora.training import setup

    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            data_dir / "train.csv",
            tmp_path,
            **{
                "run_name": "seam",
                "train.max_steps": 40,
                "train.eval_every": 20,
                "train.log_every": 10,
            },
        ),
    )
    loop = setup(cfg, progress=False)
    assert loop.resumed_from is None and loop.step == 0 and (loop.run_dir / "config.yaml").is_file()
    seen = []
    fit = loop.fit(on_eval=lambda step, metrics: seen.append((step, metrics)))
    assert fit.steps == 40 and fit.resumed_from is None
    assert not (loop.run_dir / "summary.json").exists()
    val = [r for r in read_metrics(loop.run_dir / "metrics.jsonl") if r["split"] == "validation"]
    assert [s for s, _ in seen] == [r["step"] for r in val] == [20, 40]
    assert [m for _, m in seen] == val and {"accuracy", "macro_f1", "loss"} <= seen[0][1].keys()
    run = loop.export(fit)
    assert run.summary["steps"] == 40 and run.summary["resumed_from_step"] is None
    assert run.summary["best"]["val_accuracy"] == max(r["accuracy"] for r in val)


def test_an_on_eval_exception_propagates_after_the_loop_closed_its_outputs(
    tiny_model_dir, data_dir, tmp_path, monkeypatch
):
    import agnews_lora.loop as loop_module
    from agnews_lora.runs import MetricsLog

    closed = {"bar": 0, "log": 0}

    class Bar:  # stands in for tqdm
        def __init__(self, *a, **k):
            pass

        def set_postfix(self, **k):
            pass

        def update(self, n):
            pass

        def close(self):
            closed["bar"] += 1

    real_close = MetricsLog.close

    def counting_close(self):
        closed["log"] += 1
        real_close(self)

    monkeypatch.setattr(loop_module, "tqdm", Bar)
    monkeypatch.setattr(MetricsLog, "close", counting_close)

    class Stop(Exception):
        pass

    def on_eval(step, metrics):
        if step == 40:
            raise Stop(f"enough at {step}")

    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            data_dir / "train.csv",
            tmp_path,
            **{
                "run_name": "cb",
                "train.max_steps": 60,
                "train.eval_every": 20,
                "train.log_every": 10,
            },
        ),
    )
    with pytest.raises(Stop, match="enough at 40"):
        train(cfg, progress=True, on_eval=on_eval)
    assert closed == {"bar": 1, "log": 1}
    run_dir = tmp_path / "runs" / "cb"
    rows = read_metrics(run_dir / "metrics.jsonl")
    # complete lines, up to the failure
    assert rows[-1] == {**rows[-1], "split": "validation", "step": 40}
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoints").exists()


def test_max_length_beyond_the_position_limit_is_refused_before_weights_load(
    tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    """The tiny RoBERTa has 130 positions, 2 of them taken by the padding offset: 128 tokens fit."""
    import agnews_lora.training as training
    from agnews_lora.cli import main
    from agnews_lora.modeling import load_model_config

    assert training.position_limit(load_model_config(str(tiny_model_dir))) == 128

    def no_weights(*a, **k):
        raise AssertionError("weights loaded before the max_length check")

    monkeypatch.setattr(training, "load_base_model", no_weights)
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"model.max_length": 129, "run_name": "long"},
    )
    assert main(["train", "--no-progress", *[x for s in sets for x in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.max_length=129" in err and "128 tokens" in err
    assert "model.max_length <= 128" in err
    assert not (tmp_path / "runs" / "long").exists()


def test_position_limits_of_bert_and_roberta_configs():
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    from agnews_lora.training import position_limit

    assert position_limit(BertConfig()) == 512
    assert position_limit(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
    assert position_limit(MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == 512


def test_saving_the_adapter_never_asks_the_hub_or_warns_about_the_base_model(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A `offline:`/`package:` spec or a Hub id: PEFT is not left to look up the base config to save."""
    import warnings

    import peft.utils.save_and_load as peft_save
    from transformers import AutoTokenizer

    from agnews_lora.export import save_adapter_and_merged
    from agnews_lora.modeling import apply_lora, load_base_model

    def no_hub(*args, **kwargs):
        raise AssertionError("PEFT looked the base model up on the Hub")

    monkeypatch.setattr(peft_save, "check_file_exists_on_hf_hub", no_hub)
    cfg = load_config(None, [f"model.name_or_path={tiny_model_dir}"])
    model = apply_lora(load_base_model(cfg), cfg.lora)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter_and_merged(model, tokenizer, tmp_path, "offline:all-mpnet-base-v2")
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "config.json").is_file()
