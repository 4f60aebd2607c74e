"""Length-aware batching: spend compute on real tokens, not on padding.

Batch order is a pure function of (seed, epoch), so a resumed run sees exactly the
batches the interrupted run would have seen, and every process can compute its own
shard without communication.
"""

from __future__ import annotations

import numpy as np
import torch


def train_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool, mega: int = 64) -> list[np.ndarray]:
    """One epoch of training batches (index arrays).

    With ``group_by_length``: shuffle, cut into mega-batches of ``mega`` batches, sort
    each mega-batch by length and cut it into batches, then shuffle the batch order, so
    batches hold similar lengths but the sequence of batches stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    span = batch_size * mega
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: np.ndarray, batch_size: int, multiple: int = 1, min_tokens: int = 0) -> list[np.ndarray]:
    """Evaluation / prediction batches: longest first, so each batch pads little; at most ``batch_size`` rows.

    With ``min_tokens`` > 0 a batch also ends where the padded width (length rounded up to
    ``multiple``) changes, as soon as it holds ``min_tokens`` padded tokens.  Otherwise the few
    long texts of a set (AG News: mean 53 tokens, max 348) make a whole batch of much shorter
    ones pad to their length: fixed batches of 128 over 2,048 headlines pad 1.44x the real
    tokens, these 1.08x (multiple 8, min_tokens 2048).
    """
    order = np.argsort(-lengths, kind="stable")
    if min_tokens <= 0:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    padded = -(-lengths[order] // multiple) * multiple
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        rows = end - start
        if end == len(order) or rows == batch_size or (padded[end] != padded[start] and rows * padded[start] >= min_tokens):
            batches.append(order[start:end])
            start = end
    return batches


def collate(ids: list[np.ndarray], pad_id: int, multiple: int = 16, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a list of token-id arrays to the longest, rounded up to ``multiple`` (never past max_length)."""
    longest = max(len(x) for x in ids)
    width = -(-longest // multiple) * multiple
    if max_length is not None:
        width = max(longest, min(width, max_length))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.from_numpy(x.astype(np.int64))
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
