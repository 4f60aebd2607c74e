"""Transformers configs for `plan`: the real one where it is at hand, else a built-in one.

Well-known Hub ids (``roberta-base`` ...) have built-in configs (sizes as in their config.json), used
when neither a local directory nor the local Hugging Face cache holds the real one, so ``plan`` works
offline and never waits on the network for them.
"""

from __future__ import annotations

from pathlib import Path

_ROBERTA = dict(
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
_LARGE = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
)
_MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
_BUILTIN: dict[str, tuple[str, dict]] = {
    "roberta-base": ("roberta", _ROBERTA),
    "roberta-large": ("roberta", {**_ROBERTA, **_LARGE}),
    "distilroberta-base": ("roberta", {**_ROBERTA, "num_hidden_layers": 6}),
    "bert-base-uncased": ("bert", {}),
    "bert-base-cased": ("bert", {"vocab_size": 28996}),
    "bert-large-uncased": ("bert", _LARGE),
    "bert-large-cased": ("bert", {**_LARGE, "vocab_size": 28996}),
    "distilbert-base-uncased": ("distilbert", {}),
    "distilbert-base-cased": ("distilbert", {"vocab_size": 28996}),
    "all-MiniLM-L6-v2": ("bert", _MINILM),
    "MiniLM-L6-H384-uncased": ("bert", _MINILM),
}
_ORGS = {
    "FacebookAI": "roberta",
    "distilbert": "distil",
    "google-bert": "bert",
    "sentence-transformers": "all-MiniLM",
    "nreimers": "MiniLM",
}


def builtin_ids() -> list[str]:
    """Every id with a built-in config, with and without its Hub organisation."""
    ids = []
    for name in _BUILTIN:
        ids.append(name)
        ids += [f"{org}/{name}" for org, prefix in _ORGS.items() if name.startswith(prefix)]
    return ids


def builtin_config(name: str):
    """The built-in transformers config for a well-known id, or None."""
    org, _, short = name.rpartition("/")
    if short not in _BUILTIN or (org and f"{org}/{short}" not in builtin_ids()):
        return None
    from transformers import AutoConfig

    model_type, sizes = _BUILTIN[short]
    return AutoConfig.for_model(model_type, **sizes)


def resolve_model_config(name: str):
    """``(config, note)``: the real config where one is at hand, else a built-in one (``note`` says so)."""
    from .modeling import load_model_config, resolve_model_path

    builtin = builtin_config(name)
    if builtin is None or Path(name).expanduser().exists():
        return load_model_config(name), None
    from transformers import AutoConfig

    try:  # the local Hugging Face cache only: a well-known id never waits on Hub retries
        return AutoConfig.from_pretrained(resolve_model_path(name), local_files_only=True), None
    except (OSError, ValueError):
        return builtin, (
            f"no local copy of the '{name}' config (the Hub is not contacted for well-known ids); "
            f"using the built-in {type(builtin).__name__} with {name}'s sizes"
        )
