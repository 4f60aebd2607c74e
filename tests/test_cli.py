"""End to end through `agnews_lora.cli.main`: train -> evaluate -> predict on the tiny model, and every bad input."""

import csv
import json
import pickle
from pathlib import Path

import pytest
from conftest import tiny_overrides
from helpers import set_args

from agnews_lora.cli import main


def _sets(items: list[str]) -> list[str]:
    return set_args(items)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_train_evaluate_predict_end_to_end(tiny_model_dir, data_dir, tmp_path, capsys):
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"data.test_file": str(data_dir / "test.csv"), "run_name": "e2e"},
    )
    assert main(["train", "--no-progress", *_sets(sets)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "e2e"
    assert f"run            {run}" in out and "best val" in out

    files = _files(run)
    expected = {
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "plots/loss_curves.png",
        "plots/accuracy_curve.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
        "adapter/README.md",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/tokenizer.json",
        "merged/tokenizer_config.json",
        "report.html",
        "merged/README.md",
        "validation_logits.npy",
    }
    assert files == expected, files ^ expected

    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"]["trainable"] == summary["params"]["lora"] + summary["params"]["head"]
    assert summary["budget"]["max_trainable_params"] == 1_000_000
    assert summary["base_model"] == str(tiny_model_dir)
    assert summary["world_size"] == 1 and summary["global_batch_size"] == 16
    assert summary["precision"] in ("bf16", "fp32")
    assert set(summary["versions"]) >= {"torch", "transformers", "peft", "accelerate", "datasets"}
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_model_dir)
    merged_cfg = json.loads((run / "merged" / "config.json").read_text())
    assert merged_cfg["id2label"] == {"0": "World", "1": "Sports", "2": "Business", "3": "Sci/Tech"}

    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "validation"] == [40, 80, 120]
    assert [r["step"] for r in rows if r["split"] == "train"] == [20, 40, 60, 80, 100, 120]

    assert main(["evaluate", str(run)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert _files(run / "eval") == {
        "test/metrics.json",
        "test/classification_report.txt",
        "test/confusion_matrix.png",
    }
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["rows"] == 200 and 0.4 < metrics["accuracy"] <= 1 and "macro_f1" in metrics
    assert sum(map(sum, metrics["confusion_matrix"])) == 200
    assert "Sci/Tech" in (run / "eval" / "test" / "classification_report.txt").read_text()

    # --data FILE evaluates another split, named after the file
    assert main(["evaluate", str(run), "--data", str(data_dir / "train.csv")]) == 0
    assert (run / "eval" / "train" / "metrics.json").is_file()

    sub = tmp_path / "submission.csv"
    assert (
        main(
            ["predict", str(run), "--input", str(data_dir / "unlabelled.csv"), "--output", str(sub)]
        )
        == 0
    )
    with sub.open() as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["ID", "Label"] and len(table) == 51
    assert [int(r[0]) for r in table[1:]] == list(range(50))
    assert all(r[1] in {"0", "1", "2", "3"} for r in table[1:])

    sub2 = tmp_path / "with-probs.csv"
    assert (
        main(
            [
                "predict",
                str(run),
                "--input",
                str(data_dir / "unlabelled.csv"),
                "--output",
                str(sub2),
                "--probabilities",
                "--label-names",
            ]
        )
        == 0
    )
    with sub2.open() as fh:
        table2 = list(csv.reader(fh))
    assert table2[0] == [
        "ID",
        "Label",
        "LabelName",
        "p_World",
        "p_Sports",
        "p_Business",
        "p_Sci/Tech",
    ]
    assert [r[1] for r in table2[1:]] == [r[1] for r in table[1:]]
    assert all(abs(sum(map(float, r[3:])) - 1) < 1e-4 for r in table2[1:])


def test_kaggle_pickle_round_trips_to_id_label(trained_run, tmp_path, capsys):
    import datasets

    from agnews_lora.prediction import Predictor
    from agnews_lora.tiny import synthetic_rows

    texts = [t for t, _ in synthetic_rows(40, seed=9)]
    pkl = tmp_path / "test_unlabelled.pkl"
    with pkl.open("wb") as fh:
        pickle.dump(datasets.Dataset.from_dict({"text": texts}), fh)
    out = tmp_path / "submission.csv"

    assert main(["predict", str(trained_run), "--input", str(pkl), "--output", str(out)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err and not out.exists()

    assert (
        main(
            [
                "predict",
                str(trained_run),
                "--input",
                str(pkl),
                "--output",
                str(out),
                "--trust-pickle",
            ]
        )
        == 0
    )
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["ID"]) for r in rows] == list(range(40))
    assert [int(r["Label"]) for r in rows] == Predictor.from_run(trained_run).predict(texts)


def test_over_budget_exits_2_before_training(tiny_model_dir, data_dir, tmp_path, capsys):
    sets = tiny_overrides(
        tiny_model_dir, data_dir / "train.csv", tmp_path, **{"budget.max_trainable_params": 1000}
    )
    assert main(["train", "--no-progress", *_sets(sets)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: over budget: 3,236 trainable parameters (LoRA 2,048 + head 1,188)"
    )
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


BAD_TRAIN_FILES = {
    "missing file": (None, "not found"),
    "wrong columns": (
        "headline,label\nStocks rally,2\n",
        "has no 'text' column (nor 'title' + 'description'); columns found: headline, label",
    ),
    "label out of range": (
        "text,label\n" + "Stocks rally,2\n" * 20 + "Rain today,7\n",
        "has label 7, outside the label set 0..3",
    ),
    "unknown label name": (
        "text,label\n" + "Stocks rally,Business\n" * 20 + "Rain today,Weather\n",
        "has label 'Weather', which is not one of",
    ),
    "empty text": (
        "text,label\n" + "Stocks rally,2\n" * 20 + '"  ",1\n',
        "row(s) have an empty or missing text",
    ),
    "not utf-8": (b"text,label\n" + b"Caf\xe9 opens,2\n" * 20, "is not UTF-8 text"),
    "no label column": ("text\nStocks rally\n", "has no 'label' column"),
    "unsupported extension": ("x", "unsupported extension"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_FILES))
def test_bad_training_data_gets_one_line_and_exit_2(case, tiny_model_dir, tmp_path, capsys):
    content, message = BAD_TRAIN_FILES[case]
    path = tmp_path / ("data.txt" if case == "unsupported extension" else "data.csv")
    if content is not None:
        _write(path, content)
    sets = tiny_overrides(tiny_model_dir, path, tmp_path)
    assert main(["train", "--no-progress", *_sets(sets)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_title_description_and_named_labels_are_accepted(tiny_model_dir, tmp_path):
    from agnews_lora.data import read_table

    path = _write(
        tmp_path / "td.jsonl",
        "\n".join(
            json.dumps({"title": f"T{i}", "description": "oil prices", "label": "Business"})
            for i in range(3)
        ),
    )
    table = read_table(path, ["World", "Sports", "Business", "Sci/Tech"])
    assert table.texts[0] == "T0 oil prices" and list(table.labels) == [2, 2, 2]


def test_config_errors(tmp_path, capsys):
    bad = _write(tmp_path / "bad.yaml", "train:\n  learning_rate: [oops\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid YAML at line" in capsys.readouterr().err
    unknown = _write(tmp_path / "unknown.yaml", "train:\n  lerning_rate: 1e-4\n")
    assert main(["train", "--config", str(unknown)]) == 2
    assert (
        "unknown config key 'train.lerning_rate' (did you mean 'learning_rate'?)"
        in capsys.readouterr().err
    )
    assert main(["train", "--set", "lora.rank=4"]) == 2
    assert "did you mean 'r'" in capsys.readouterr().err
    assert main(["train", "--bogus-flag"]) == 2  # argparse usage error


def test_missing_model_path_and_unreachable_hub(data_dir, tmp_path, capsys):
    base = [
        "train",
        "--no-progress",
        "--set",
        f"data.train_file={data_dir / 'train.csv'}",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
    ]
    assert main(base + ["--set", f"model.name_or_path={tmp_path / 'no-such-model'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # HF_HUB_OFFLINE=1 (conftest) makes the Hub unreachable, as on these machines
    assert main(base + ["--set", "model.name_or_path=roberta-base"]) == 2
    err = capsys.readouterr().err
    assert (
        "could not load 'roberta-base' from the Hugging Face Hub" in err
        and "configs/offline-minilm.yaml" in err
    )
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unreachable_hub_dataset(tiny_model_dir, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--no-progress",
                "--set",
                f"model.name_or_path={tiny_model_dir}",
                "--set",
                f"output_dir={tmp_path}",
                "--set",
                "model.max_length=64",
            ]
        )
        == 2
    )  # within the tiny model's 128 positions
    err = capsys.readouterr().err
    assert "could not load dataset 'fancyzhx/ag_news'" in err and "data.train_file" in err


def test_corrupt_or_foreign_run_directories(trained_run, tmp_path, capsys):
    import shutil

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    assert main(["evaluate", str(foreign)]) == 2
    assert "not an agnews-lora run directory" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(trained_run / "config.yaml", unfinished / "config.yaml")
    assert main(["predict", str(unfinished), "--input", "x.csv", "--output", "y.csv"]) == 2
    assert "is not finished (no summary.json)" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken, ignore=shutil.ignore_patterns("eval"))
    (broken / "merged" / "model.safetensors").write_bytes(b"\0garbage")
    assert main(["evaluate", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "merged/ model cannot be loaded" in err and len(err.strip().splitlines()) == 1

    (broken / "summary.json").write_text("{not json")
    assert main(["evaluate", str(broken)]) == 2
    assert "summary.json' is corrupt" in capsys.readouterr().err

    (broken / "config.yaml").write_text("model: [\n")
    assert main(["evaluate", str(broken)]) == 2
    assert "config.yaml' is corrupt" in capsys.readouterr().err


def test_evaluate_needs_a_test_split_for_local_runs(tiny_model_dir, data_dir, tmp_path, capsys):
    sets = tiny_overrides(
        tiny_model_dir,
        data_dir / "train.csv",
        tmp_path,
        **{"run_name": "no-test", "train.max_steps": 5, "train.eval_every": 5},
    )
    assert main(["train", "--no-progress", *_sets(sets)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "runs" / "no-test")]) == 2
    assert "pass --data FILE" in capsys.readouterr().err


def test_existing_run_name_is_not_overwritten(trained_run, capsys):
    import yaml

    cfg = yaml.safe_load((trained_run / "config.yaml").read_text())
    sets = [
        f"{sec}.{k}={json.dumps(v)}"
        for sec, body in cfg.items()
        if isinstance(body, dict)
        for k, v in body.items()
    ]
    sets += [f"output_dir={cfg['output_dir']}", f"run_name={cfg['run_name']}"]
    assert main(["train", "--no-progress", *_sets(sets)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_int8_evaluation_reports_its_accuracy_delta_without_library_noise(trained_run, tmp_path):
    """`evaluate --quantize int8` in a real process: its own metrics next to the bf16/fp32 ones, no warnings."""
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("eval"))
    env = {
        k: v for k, v in __import__("os").environ.items() if k != "PYTHONWARNINGS"
    }  # what a user's shell shows
    assert main(["evaluate", str(run)]) == 0  # the bf16/fp32 metrics, in this process
    proc = subprocess.run(
        [sys.executable, "-m", "agnews_lora", "evaluate", str(run), "--quantize", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]
    full = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    int8 = json.loads((run / "eval" / "test-int8" / "metrics.json").read_text())
    assert int8["quantized"] is True and full["quantized"] is False and int8["rows"] == full["rows"]
    assert (
        abs(int8["accuracy"] - full["accuracy"]) <= 0.1
    )  # a tiny model: int8 moves a few predictions at most


def _run_copy(trained_run, tmp_path) -> Path:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def test_predict_never_overwrites_without_overwrite(trained_run, data_dir, tmp_path, capsys):
    inp = tmp_path / "in.csv"
    inp.write_bytes((data_dir / "unlabelled.csv").read_bytes())
    before = inp.read_bytes()
    out = tmp_path / "mine.csv"
    out.write_text("precious\n")
    base = ["predict", str(trained_run), "--input", str(inp)]

    assert main([*base, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --output '{out}' already exists; pass --overwrite to replace it"
    assert out.read_text() == "precious\n"

    assert main([*base, "--output", str(inp)]) == 2  # onto the input itself
    err = capsys.readouterr().err
    assert "is the --input file; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert inp.read_bytes() == before

    assert main([*base, "--output", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("ID,Label\n") and len(out.read_text().splitlines()) == 51
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "mine.csv"]  # no temporary file


def test_predict_output_that_is_a_directory_is_one_line_and_leaves_nothing(
    trained_run, data_dir, tmp_path, capsys
):
    target = tmp_path / "outdir"
    target.mkdir()
    argv = [
        "predict",
        str(trained_run),
        "--input",
        str(data_dir / "unlabelled.csv"),
        "--output",
        str(target),
    ]
    for extra in ([], ["--overwrite"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --output '{target}' is a directory")
        assert len(err.strip().splitlines()) == 1
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]


def test_write_submission_refuses_a_directory_even_when_called_directly(tmp_path):
    from agnews_lora.errors import UserError
    from agnews_lora.prediction import write_submission

    with pytest.raises(UserError, match="is a directory"):
        write_submission(tmp_path, [0, 1], overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_data_names_cannot_escape_eval_or_replace_held_out_results(
    trained_run, data_dir, tmp_path, capsys
):
    from agnews_lora.errors import UserError
    from agnews_lora.evaluation import eval_dir

    run = _run_copy(trained_run, tmp_path)
    assert main(["evaluate", str(run)]) == 0
    held_out = (run / "eval" / "test" / "metrics.json").read_text()
    capsys.readouterr()

    other = tmp_path / "other"
    other.mkdir()
    named_test = other / "test.csv"  # a file called test.csv is not the held-out test split
    named_test.write_bytes((data_dir / "train.csv").read_bytes())
    assert main(["evaluate", str(run), "--data", str(named_test)]) == 2
    err = capsys.readouterr().err
    assert "would replace the held-out results" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert (run / "eval" / "test" / "metrics.json").read_text() == held_out

    assert main(["evaluate", str(run), "--data", str(named_test), "--overwrite"]) == 0
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["rows"] == 800

    dots = other / "...csv"  # its name ('..') would write into RUN_DIR itself
    dots.write_bytes((data_dir / "test.csv").read_bytes())
    for extra in ([], ["--overwrite"]):
        assert main(["evaluate", str(run), "--data", str(dots), *extra]) == 2
        assert "cannot name a folder under" in capsys.readouterr().err
    assert not (run / "metrics.json").exists() and not (run / "classification_report.txt").exists()
    for name in ("..", ".", "", "a/b", "/abs", "..\\x"):
        with pytest.raises(UserError, match="cannot name a folder"):
            eval_dir(run, name, True, overwrite=True)
    assert eval_dir(run, "train", True, overwrite=False) == run / "eval" / "train"


def test_output_dir_that_is_a_file_is_one_line(tiny_model_dir, data_dir, tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    sets = tiny_overrides(tiny_model_dir, data_dir / "train.csv", tmp_path, output_dir=str(afile))
    assert main(["train", "--no-progress", *_sets(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot create the run directory") and "is a file" in err[-1]
    assert afile.read_text() == "not a directory"
