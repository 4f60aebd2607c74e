"""Offline stand-ins: a tiny RoBERTa saved like ``roberta-base``, and synthetic AG-News-like rows.

Used by the tests, the quick benchmarks and anyone who wants to try the pipeline without
the Hub.  The model directory loads through exactly the same code path as ``roberta-base``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

_TOPIC_WORDS = {
    0: "minister election government parliament war embassy president troops treaty rebels capital summit".split(),
    1: "match team season coach goal league championship score players victory cup tournament".split(),
    2: "shares profit market stocks earnings bank investors revenue oil prices merger quarterly".split(),
    3: "software internet computer researchers space chip google microsoft science phone network data".split(),
}
_FILLER = "the a of in on to and for with after as by new says reports said today week year first over".split()


def synthetic_rows(
    n: int, seed: int = 0, min_words: int = 6, max_words: int = 40
) -> list[tuple[str, int]]:
    """``n`` (text, label) rows: filler words plus a few topic words; lengths vary like headlines."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 4
        k = int(rng.integers(min_words, max_words + 1))
        words = list(rng.choice(_FILLER, size=k))
        n_topic = max(2, k // 3)
        for pos, w in zip(
            rng.integers(0, k, size=n_topic), rng.choice(_TOPIC_WORDS[label], size=n_topic)
        ):
            words[pos] = str(w)
        text = " ".join(words)
        rows.append((text[0].upper() + text[1:] + ".", label))
    rng.shuffle(rows)
    return rows


def write_csv(path: str | Path, rows: list[tuple[str, int]], with_labels: bool = True) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"] if with_labels else ["text"])
        for text, label in rows:
            w.writerow([text, label] if with_labels else [text])
    return path


def build_tiny_roberta(
    out_dir: str | Path,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 130,
    vocab_size: int = 600,
    seed: int = 0,
    dropout: float = 0.1,
) -> Path:
    """Train a byte-level BPE tokenizer on synthetic text and save a random tiny RoBERTa next to it."""
    import torch
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = [t for t, _ in synthetic_rows(400, seed=seed)] + [
        " ".join(w) for w in _TOPIC_WORDS.values()
    ]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )  # pad id 1, as in roberta-base
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = RobertaTokenizerFast(tokenizer_object=bpe, model_max_length=max_positions - 2)
    tok.save_pretrained(out)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        initializer_range=0.2,  # larger than roberta-base: a random tiny encoder then passes content to <s>
    )
    torch.manual_seed(seed)
    RobertaForMaskedLM(config).save_pretrained(
        out
    )  # an encoder checkpoint without a classifier, like roberta-base
    return out
