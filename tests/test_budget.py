import pytest
from transformers import RobertaConfig

from agnews_lora.budget import check_budget
from agnews_lora.config import Config, apply_overrides
from agnews_lora.errors import UserError
from agnews_lora.training import plan_counts


@pytest.fixture(scope="module")
def roberta_base_shape(tmp_path_factory):
    """roberta-base's architecture as a config.json only: no weights, no Hub."""
    d = tmp_path_factory.mktemp("roberta-base-shape")
    RobertaConfig().save_pretrained(d)  # defaults are roberta-base's sizes
    return d


@pytest.mark.parametrize(
    "targets, expected_lora", [("[query,key,value]", 221_184), ("[query,value]", 147_456)]
)
def test_seed_budget_figures_are_exact(roberta_base_shape, targets, expected_lora):
    cfg = apply_overrides(
        Config(),
        [f"model.name_or_path={roberta_base_shape}", "lora.r=4", f"lora.target_modules={targets}"],
    )
    counts = plan_counts(cfg)
    assert counts.head == 593_668
    assert counts.lora == expected_lora
    assert counts.trainable == {221_184: 814_852, 147_456: 741_124}[expected_lora]
    assert counts.other == 0


def test_default_recipe_fits_the_budget(roberta_base_shape):
    cfg = apply_overrides(Config(), [f"model.name_or_path={roberta_base_shape}"])
    counts = plan_counts(cfg)
    assert counts.trainable <= cfg.budget.max_trainable_params
    assert counts.trainable == 12 * 2 * cfg.lora.r * (768 + 768) + 593_668


def test_layer_subset_and_lora_bias_are_counted(roberta_base_shape):
    half = plan_counts(
        apply_overrides(
            Config(),
            [f"model.name_or_path={roberta_base_shape}", "lora.r=4", "lora.layers=[6,7,8,9,10,11]"],
        )
    )
    assert half.lora == 6 * 2 * 4 * 1536
    bias = plan_counts(
        apply_overrides(
            Config(),
            [f"model.name_or_path={roberta_base_shape}", "lora.r=4", "lora.bias=lora_only"],
        )
    )
    assert bias.other == 12 * 2 * 768  # the biases of the adapted query/value layers


def test_over_budget_is_a_user_error(roberta_base_shape):
    counts = plan_counts(
        apply_overrides(
            Config(),
            [
                f"model.name_or_path={roberta_base_shape}",
                "lora.r=64",
                "lora.target_modules=[query,key,value]",
            ],
        )
    )
    with pytest.raises(
        UserError,
        match=r"over budget: 4,132,612 trainable parameters \(LoRA 3,538,944 \+ head 593,668\) > "
        r"budget.max_trainable_params 1,000,000",
    ):
        check_budget(counts, 1_000_000)
    check_budget(counts, counts.trainable)  # exactly at the budget is fine


def test_lora_on_the_classifier_head_is_refused(roberta_base_shape):
    with pytest.raises(UserError, match="classifier head"):
        plan_counts(
            apply_overrides(
                Config(),
                [
                    f"model.name_or_path={roberta_base_shape}",
                    "lora.target_modules=[query,out_proj]",
                ],
            )
        )
