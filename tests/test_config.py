import dataclasses
from pathlib import Path

import pytest
import yaml

from agnews_lora.config import Config, apply_overrides, config_from_dict, load_config, save_config
from agnews_lora.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _field_tree(obj) -> dict:
    return {
        f.name: (
            _field_tree(getattr(obj, f.name))
            if dataclasses.is_dataclass(getattr(obj, f.name))
            else None
        )
        for f in dataclasses.fields(obj)
    }


def _key_tree(data) -> dict:
    return {k: (_key_tree(v) if isinstance(v, dict) else None) for k, v in data.items()}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_lists_every_field(path):
    load_config(path)
    assert _key_tree(yaml.safe_load(path.read_text())) == _field_tree(Config())
    # every key is commented: each "key:" line is preceded by a comment line
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), (
                f"{path.name}: '{line.strip()}' has no comment"
            )


def test_default_yaml_equals_builtin_defaults():
    assert load_config(CONFIGS[0].parent / "default.yaml") == Config()


def test_seed_configs_hold_the_seed_recipes():
    nb = load_config(CONFIGS[0].parent / "seed-notebook.yaml")
    assert (nb.lora.r, nb.lora.alpha, nb.lora.dropout, nb.lora.target_modules) == (
        4,
        4.0,
        0.2,
        ["query", "key", "value"],
    )
    assert (
        nb.train.learning_rate,
        nb.train.per_device_batch_size,
        nb.train.eval_batch_size,
        nb.train.max_steps,
        nb.data.val_size,
    ) == (1e-5, 16, 64, 2000, 1280)
    sc = load_config(CONFIGS[0].parent / "seed-script.yaml")
    assert (
        sc.lora.r,
        sc.lora.alpha,
        sc.lora.dropout,
        sc.lora.target_modules,
        sc.model.max_length,
    ) == (4, 8.0, 0.1, ["query", "key"], 80)
    assert (
        sc.train.learning_rate,
        sc.train.epochs,
        sc.train.schedule,
        sc.train.warmup_ratio,
        sc.train.eval_every,
    ) == (2e-5, 3.0, "linear", 0.1, 250)


def test_overrides_are_parsed_as_yaml_and_type_checked():
    cfg = apply_overrides(
        Config(),
        [
            "lora.r=4",
            "train.learning_rate=3e-4",
            "lora.target_modules=[query,key]",
            "train.max_steps=10",
            "data.max_train_samples=null",
            "lora.alpha=8",
        ],
    )
    assert (
        cfg.lora.r == 4
        and cfg.train.learning_rate == 3e-4
        and cfg.lora.target_modules == ["query", "key"]
    )
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert apply_overrides(Config(), ["lora.target_modules=query,value"]).lora.target_modules == [
        "query",
        "value",
    ]
    with pytest.raises(UserError, match="must be an integer"):
        apply_overrides(Config(), ["lora.r=four"])
    with pytest.raises(UserError, match="must be >= 1"):
        apply_overrides(Config(), ["lora.r=0"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides(Config(), ["lora.r"])


def test_unknown_keys_suggest_the_nearest():
    with pytest.raises(
        UserError, match=r"unknown config key 'train.learning_rat'.*did you mean 'learning_rate'"
    ):
        apply_overrides(Config(), ["train.learning_rat=1e-4"])
    with pytest.raises(UserError, match=r"unknown config key 'lorra'.*did you mean 'lora'"):
        config_from_dict({"lorra": {"r": 4}})


def test_bad_yaml_is_reported_with_its_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: [4\n")
    with pytest.raises(UserError, match=r"not valid YAML at line"):
        load_config(bad)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), ["lora.r=2", "run_name=x", "lora.layers=[0,1]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_readme_config_reference_lists_every_key():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cfg = Config()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        keys = (
            [f"{section.name}.{f.name}" for f in dataclasses.fields(value)]
            if dataclasses.is_dataclass(value)
            else [section.name]
        )
        for key in keys:
            assert f"| `{key}` |" in readme, f"README configuration reference misses {key}"


# ---------------------------------------------------------------------------------------------
# types, bounds and the bounded YAML loader (issues 13 and 14)


def test_annotations_are_resolved_types_with_typed_list_elements():
    from typing import Literal

    from agnews_lora.config import LoraSettings, TrainConfig
    from agnews_lora.config_check import type_hints

    assert type_hints(LoraSettings)["layers"] == list[int] | None
    assert type_hints(LoraSettings)["target_modules"] == list[str]
    assert type_hints(TrainConfig)["schedule"] == Literal["linear", "cosine", "constant"]


@pytest.mark.parametrize(
    "item, message",
    [
        ("lora.layers=[a]", "'lora.layers[0]' must be an integer, got 'a'"),
        ("lora.layers=[0, 0]", "'lora.layers' lists a layer twice"),
        ("lora.layers=[-1]", "'lora.layers[0]' must be >= 0"),
        ("data.label_names=[1, 2]", "'data.label_names[0]' must be a string"),
        ("lora.target_modules=[query, [key]]", "'lora.target_modules[1]' must be a string"),
        (
            "train.schedule=cosin",
            "'train.schedule' must be one of linear, cosine, constant; got 'cosin'",
        ),
        ("lora.bias=[none]", "'lora.bias' must be one of none, all, lora_only"),
        ("model.attn_implementation=flash", "must be one of sdpa, eager"),
        ("train.learning_rate=.nan", "'train.learning_rate' must be a finite number, got nan"),
        ("train.learning_rate=.inf", "must be a finite number, got inf"),
        ("train.learning_rate=1e999", "must be a finite number, got inf"),
        ("train.learning_rate=-1e-4", "'train.learning_rate' must be > 0"),
        ("data.max_train_samples=0", "'data.max_train_samples' must be >= 1"),
        ("data.max_train_samples=-5", "'data.max_train_samples' must be >= 1"),
        ("train.seed=-1", "'train.seed' must be in [0, 4294967295]"),
        ("data.split_seed=4294967296", "'data.split_seed' must be in [0, 4294967295]"),
        ("train.weight_decay=-0.01", "'train.weight_decay' must be >= 0"),
        ("train.max_grad_norm=-1", "'train.max_grad_norm' must be >= 0"),
        ("lora.alpha=-16", "'lora.alpha' must be > 0"),
        ("lora.dropout=1.0", "'lora.dropout' must be in [0, 1)"),
        ("train.warmup_ratio=-0.1", "'train.warmup_ratio' must be in [0, 1)"),
        ("data.val_size=0", "'data.val_size' must be > 0"),
        ("data.test_size=-0.1", "'data.test_size' must be >= 0"),
        ("train.max_steps=99999999999999999999", "'train.max_steps' is out of range"),
        ("lora.r=" + "9" * 5000, "holds a value YAML cannot represent"),
        ("train.epochs=0", "'train.epochs' must be positive (or set train.max_steps)"),
        ("run_name=a\x1fb", "character #x001f at position 1"),
    ],
)
def test_bad_values_are_one_short_line(item, message):
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), [item])
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 300, text


def test_good_edge_values_are_accepted():
    cfg = apply_overrides(
        Config(),
        [
            "train.seed=4294967295",
            "train.seed=0",
            "lora.layers=0,2",
            "train.epochs=0",
            "train.max_steps=5",
            "lora.dropout=0",
            "train.max_grad_norm=0",
            "data.label_names=[a, b]",
        ],
    )
    assert cfg.train.seed == 0 and cfg.lora.layers == [0, 2] and cfg.train.epochs == 0.0


def test_a_config_built_in_code_is_checked_too():
    from agnews_lora.config import validate

    cfg = Config()
    cfg.train.learning_rate = float("nan")
    with pytest.raises(UserError, match="finite"):
        validate(cfg)


def _bomb(levels: int = 9) -> str:
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text


@pytest.mark.parametrize(
    "text, message",
    [
        (_bomb(), "aliases (*name) are not allowed"),
        (
            "lora:\n  r: 4\n  alpha: 8\n  r: 5\n",
            "line 4, column 3: duplicate key 'r' (first on line 2)",
        ),
        ("lora: {r: 4}\ntrain: {}\nlora: {}\n", "duplicate key 'lora' (first on line 1)"),
        ("lora: " + "[" * 5000 + "]" * 5000, "nested more than 32 levels deep"),
        ("lora:\n  <<: {r: 4}\n", "merge keys (<<) are not allowed"),
        ("train:\n  seed: 2001-02-30\n", "holds a value YAML cannot represent"),
    ],
)
def test_hostile_yaml_is_refused_in_bounded_memory(tmp_path, text, message):
    import tracemalloc

    path = tmp_path / "c.yaml"
    path.write_text(text)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as err:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 300
    assert peak < 20 * 2**20


def test_oversized_config_file_and_set_value_are_refused(tmp_path):
    from agnews_lora.safe_yaml import MAX_BYTES

    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    with pytest.raises(UserError, match="larger than"):
        load_config(path)
    with pytest.raises(UserError, match="longer than"):
        apply_overrides(Config(), ["run_name=" + "x" * MAX_BYTES])


def test_long_values_are_clipped_in_messages():
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), ["lora.r=" + "'" + "y" * 50_000 + "'"])
    assert len(str(err.value)) < 300
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), ["lora." + "k" * 50_000 + "=1"])
    assert len(str(err.value)) < 500


def test_run_directory_config_goes_through_the_same_loader(tmp_path):
    from agnews_lora.runs import load_run_config

    (tmp_path / "config.yaml").write_text(_bomb())
    with pytest.raises(UserError, match=r"config.yaml' is corrupt.*aliases"):
        load_run_config(tmp_path)
    (tmp_path / "config.yaml").write_text("lora:\n  r: 4\n  r: 4\n")
    with pytest.raises(UserError, match="duplicate key 'r'"):
        load_run_config(tmp_path)


def test_sweep_values_go_through_the_same_loader():
    from agnews_lora.sweep import _pairs

    assert _pairs(["lora.r=4"], "overrides") == {"lora.r": 4}
    with pytest.raises(UserError, match="aliases"):
        _pairs(["lora.layers=&a [*a, *a]"], "overrides")


def test_cli_prints_one_line_and_exits_2_for_hostile_config(tmp_path, capsys, monkeypatch):
    from agnews_lora.cli import main

    monkeypatch.chdir(tmp_path)  # the default output_dir 'runs' would land here

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb())
    assert main(["train", "--config", str(bomb)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "aliases" in err and len(err) < 500
    assert main(["train", "--set", "lora.layers=[a]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lora.layers[0]" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../outside", "/abs/path", "a/b", "..", "~x", "' '"])
def test_run_name_must_not_escape_output_dir(name):
    with pytest.raises(UserError, match="run_name"):
        load_config(None, [f"run_name={name}"])
