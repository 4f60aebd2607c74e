"""Length-aware batching: grouped training batches, the inference planner, pad-to-multiple."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agnews_lora.batching import (
    collate,
    pad_ids,
    padded_widths,
    plan_batches,
    train_batches,
)


def headline_lengths(n: int = 5000, seed: int = 0) -> np.ndarray:
    """Token counts shaped like AG News with a BERT tokenizer: mean ~53, long right tail, max 348."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=3.93, sigma=0.3, size=n).astype(np.int64), 8, 348)


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray], multiple: int = 1) -> int:
    total = 0
    for b in batches:
        width = int(lengths[b].max())
        total += (-(-width // multiple) * multiple) * len(b)
    return total


@pytest.mark.parametrize("group", [True, False])
def test_every_row_exactly_once_per_epoch(group):
    lengths = headline_lengths(3001)
    for epoch in range(3):
        batches = train_batches(lengths, 32, seed=7, epoch=epoch, group_by_length=group)
        seen = np.concatenate(batches)
        assert len(seen) == len(lengths)
        assert np.array_equal(np.sort(seen), np.arange(len(lengths)))
        assert all(1 <= len(b) <= 32 for b in batches)
        assert (
            sum(len(b) < 32 for b in batches) <= 1
        )  # only one short batch (3001 is not a multiple of 32)


def test_grouped_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = headline_lengths()
    a = train_batches(lengths, 32, seed=1, epoch=4, group_by_length=True)
    b = train_batches(lengths, 32, seed=1, epoch=4, group_by_length=True)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    other_epoch = train_batches(lengths, 32, seed=1, epoch=5, group_by_length=True)
    other_seed = train_batches(lengths, 32, seed=2, epoch=4, group_by_length=True)
    assert not np.array_equal(np.concatenate(a), np.concatenate(other_epoch))
    assert not np.array_equal(np.concatenate(a), np.concatenate(other_seed))


def test_grouped_batches_pad_far_less_than_random_batches():
    lengths = headline_lengths()
    real = int(lengths.sum())
    grouped = train_batches(lengths, 32, seed=0, epoch=0, group_by_length=True)
    random = train_batches(lengths, 32, seed=0, epoch=0, group_by_length=False)
    grouped_overhead = (
        padded_tokens(lengths, grouped, 16) / real
    )  # what training runs: grouped + pad to 16
    random_overhead = (
        padded_tokens(lengths, random) / real
    )  # Trainer default: random + pad to batch max
    assert random_overhead > 1.5
    assert grouped_overhead < 1.25
    assert grouped_overhead < 0.7 * random_overhead
    assert len(lengths) * 512 / real > 8  # padding every row to 512 would be ~10x the real tokens


def test_grouped_batch_order_stays_random():
    """Batches hold similar lengths, but the order of batches is not sorted by length."""
    lengths = headline_lengths()
    batches = train_batches(lengths, 32, seed=3, epoch=0, group_by_length=True)
    longest = np.array([lengths[b].max() for b in batches])
    assert not (np.all(np.diff(longest) <= 0) or np.all(np.diff(longest) >= 0))
    first_half = longest[: len(longest) // 2].mean()
    second_half = longest[len(longest) // 2 :].mean()
    assert (
        abs(first_half - second_half) < 0.2 * longest.mean()
    )  # long and short batches are spread over the epoch
    # within a batch lengths are close (the batch was cut from a length-sorted mega-batch)
    spread = np.median([lengths[b].max() - lengths[b].min() for b in batches if len(b) == 32])
    random_spread = np.median(
        [
            lengths[b].max() - lengths[b].min()
            for b in train_batches(lengths, 32, 3, 0, False)
            if len(b) == 32
        ]
    )
    assert spread < 0.25 * random_spread


@pytest.mark.parametrize(
    "longest,max_length,expected",
    [
        (1, 512, 16),
        (16, 512, 16),
        (17, 512, 32),
        (53, 512, 64),
        (100, 100, 100),
        (95, 100, 96),
        (97, 100, 100),
        (81, 90, 90),
        (300, 512, 304),
    ],
)
def test_collate_pads_to_multiple_of_16_without_passing_max_length(longest, max_length, expected):
    ids = [np.arange(1, longest + 1, dtype=np.int32), np.array([5, 6, 7], dtype=np.int32)]
    batch = collate(ids, pad_id=1, multiple=16, max_length=max_length)
    assert batch["input_ids"].shape == (2, expected)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == [longest, 3]
    assert batch["input_ids"][1, :3].tolist() == [5, 6, 7]
    assert torch.all(batch["input_ids"][1, 3:] == 1)  # the pad id
    assert torch.equal(batch["input_ids"][0, :longest], torch.arange(1, longest + 1))


def test_collate_without_max_length_and_other_multiples():
    ids = [np.ones(37, dtype=np.int32), np.ones(2, dtype=np.int32)]
    assert collate(ids, 0, multiple=8)["input_ids"].shape == (2, 40)
    assert collate(ids, 0, multiple=1)["input_ids"].shape == (2, 37)
    assert collate(ids, 0, multiple=64)["input_ids"].shape == (2, 64)


def test_few_distinct_shapes_with_grouping_and_pad16():
    lengths = headline_lengths()
    grouped = train_batches(lengths, 32, seed=0, epoch=0, group_by_length=True)
    random = train_batches(lengths, 32, seed=0, epoch=0, group_by_length=False)
    widths16 = {
        collate([np.zeros(lengths[i], np.int32) for i in b], 0, 16, 512)["input_ids"].shape[1]
        for b in grouped
    }
    widths_exact = {int(lengths[b].max()) for b in random}
    assert all(w % 16 == 0 for w in widths16)
    assert len(widths16) < 0.5 * len(widths_exact)


def headlines_with_long_tail(n: int = 2048, seed: int = 0) -> np.ndarray:
    lengths = headline_lengths(n, seed)
    lengths[:: max(1, n // 20)] = np.linspace(120, 348, len(lengths[:: max(1, n // 20)])).astype(
        np.int64
    )  # a few long texts
    return lengths


def fixed_batches(lengths: np.ndarray, rows: int) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + rows] for i in range(0, len(order), rows)]


@pytest.mark.parametrize("n", [1, 7, 300, 2048])
@pytest.mark.parametrize("overhead", [0, 64, 2048])
def test_planned_batches_cover_rows_longest_first(n, overhead):
    lengths = headlines_with_long_tail(n)
    batches = plan_batches(lengths, 128, multiple=8, overhead_tokens=overhead)
    order = np.concatenate(batches)
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.all(np.diff(lengths[order]) <= 0)
    assert all(1 <= len(b) <= 128 for b in batches)


def test_planned_batches_pad_far_less_than_fixed_batches():
    lengths = headlines_with_long_tail()
    real = int(lengths.sum())
    fixed = padded_tokens(lengths, fixed_batches(lengths, 128), 8) / real
    for overhead in (64, 2048):
        planned = padded_tokens(lengths, plan_batches(lengths, 128, 8, overhead), 8) / real
        assert planned < 1.15 < 1.3 < fixed


def test_the_per_pass_overhead_trades_passes_against_padding():
    lengths = headlines_with_long_tail()
    width = lambda b: -(-int(lengths[b].max()) // 8) * 8  # noqa: E731
    exact = plan_batches(
        lengths, 128, 8, overhead_tokens=0
    )  # padding only: a batch never mixes widths
    assert all(len({-(-int(x) // 8) for x in lengths[b]}) == 1 for b in exact)
    cheap, dear = plan_batches(lengths, 128, 8, 64), plan_batches(lengths, 128, 8, 2048)
    assert len(exact) > len(cheap) > len(dear) >= len(fixed_batches(lengths, 128))
    assert (
        padded_tokens(lengths, exact, 8)
        <= padded_tokens(lengths, cheap, 8)
        <= padded_tokens(lengths, dear, 8)
    )
    free_passes = plan_batches(
        lengths, 128, 8, 10**9
    )  # passes cost everything: as few as the row cap allows
    assert len(free_passes) == len(fixed_batches(lengths, 128))
    assert (
        sum(width(b) * len(b) for b in dear) + 2048 * len(dear)
        <= sum(width(b) * len(b) for b in fixed_batches(lengths, 128)) + 2048 * 16
    )  # never worse than fixed


def test_one_long_text_does_not_make_short_ones_pad_to_its_length():
    lengths = np.array([20] * 15 + [128, 100] + [20] * 15)  # unsorted: the planner sorts
    plan = plan_batches(lengths, 16, multiple=16, overhead_tokens=64)
    assert all(0 < len(b) <= 16 for b in plan) and sorted(np.concatenate(plan)) == list(range(32))
    assert list(plan[0][:2]) == [15, 16]  # longest first
    padded = padded_tokens(lengths, plan, 16)
    assert padded < len(lengths) * 128 / 3  # one padded batch would cost 32 x 128 tokens
    assert [list(b) for b in plan_batches(np.full(8, 50), 16)] == [list(range(8))]
    assert plan_batches(np.array([], dtype=np.int64), 4) == []


def test_padded_widths_and_pad_ids_follow_collate():
    assert padded_widths(np.array([1, 16, 17, 97, 100]), 16, 100).tolist() == [16, 16, 32, 100, 100]
    ids = [np.arange(1, 38, dtype=np.int32), np.array([5, 6], dtype=np.int32)]
    input_ids, mask = pad_ids(ids, pad_id=1, multiple=8)
    assert input_ids.dtype == np.int64 and mask.dtype == np.int64 and input_ids.shape == (2, 40)
    batch = collate(ids, pad_id=1, multiple=8)
    assert np.array_equal(batch["input_ids"].numpy(), input_ids)
    assert np.array_equal(batch["attention_mask"].numpy(), mask)


def test_batched_logits_do_not_depend_on_how_rows_are_batched(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from agnews_lora.prediction import batched_logits, encode_texts
    from agnews_lora.tiny import synthetic_rows

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=4).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [t for t, _ in synthetic_rows(300, seed=5, min_words=2, max_words=60)]
    enc, _ = encode_texts(tok, texts, 128)
    _, fixed = batched_logits(model, enc, 64, tok.pad_token_id, "cpu", min_tokens=0, max_length=128)
    _, packed = batched_logits(
        model, enc, 64, tok.pad_token_id, "cpu", multiple=8, min_tokens=256, max_length=128
    )
    _, one_by_one = batched_logits(model, enc, 1, tok.pad_token_id, "cpu", max_length=128)
    np.testing.assert_allclose(packed, fixed, atol=1e-5)
    np.testing.assert_allclose(one_by_one, fixed, atol=1e-5)
