import dataclasses
from pathlib import Path

import pytest
import yaml

from agnews_lora.config import Config, apply_overrides, config_from_dict, load_config, save_config
from agnews_lora.errors import UserError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _field_tree(obj) -> dict:
    return {f.name: (_field_tree(getattr(obj, f.name)) if dataclasses.is_dataclass(getattr(obj, f.name)) else None)
            for f in dataclasses.fields(obj)}


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
            assert lines[i - 1].lstrip().startswith("#"), f"{path.name}: '{line.strip()}' has no comment"


def test_default_yaml_equals_builtin_defaults():
    assert load_config(CONFIGS[0].parent / "default.yaml") == Config()


def test_seed_configs_hold_the_seed_recipes():
    nb = load_config(CONFIGS[0].parent / "seed-notebook.yaml")
    assert (nb.lora.r, nb.lora.alpha, nb.lora.dropout, nb.lora.target_modules) == (4, 4.0, 0.2, ["query", "key", "value"])
    assert (nb.train.learning_rate, nb.train.per_device_batch_size, nb.train.eval_batch_size, nb.train.max_steps, nb.data.val_size) == (1e-5, 16, 64, 2000, 1280)
    sc = load_config(CONFIGS[0].parent / "seed-script.yaml")
    assert (sc.lora.r, sc.lora.alpha, sc.lora.dropout, sc.lora.target_modules, sc.model.max_length) == (4, 8.0, 0.1, ["query", "key"], 80)
    assert (sc.train.learning_rate, sc.train.epochs, sc.train.schedule, sc.train.warmup_ratio, sc.train.eval_every) == (2e-5, 3.0, "linear", 0.1, 250)


def test_overrides_are_parsed_as_yaml_and_type_checked():
    cfg = apply_overrides(Config(), ["lora.r=4", "train.learning_rate=3e-4", "lora.target_modules=[query,key]",
                                     "train.max_steps=10", "data.max_train_samples=null", "lora.alpha=8"])
    assert cfg.lora.r == 4 and cfg.train.learning_rate == 3e-4 and cfg.lora.target_modules == ["query", "key"]
    assert cfg.lora.alpha == 8.0 and isinstance(cfg.lora.alpha, float)
    assert apply_overrides(Config(), ["lora.target_modules=query,value"]).lora.target_modules == ["query", "value"]
    with pytest.raises(UserError, match="must be an integer"):
        apply_overrides(Config(), ["lora.r=four"])
    with pytest.raises(UserError, match="must be >= 1"):
        apply_overrides(Config(), ["lora.r=0"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides(Config(), ["lora.r"])


def test_unknown_keys_suggest_the_nearest():
    with pytest.raises(UserError, match=r"unknown config key 'train.learning_rat'.*did you mean 'learning_rate'"):
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
        keys = [f"{section.name}.{f.name}" for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else [section.name]
        for key in keys:
            assert f"| `{key}` |" in readme, f"README configuration reference misses {key}"
