"""The worker half of ``benchmarks/throughput.py``: one style, timed in its own process.

``throughput.py --worker STYLE --spec SPEC --out OUT`` lands here (see that file's docstring for what
each style does and how it is timed). ``Plan`` (how much each style runs) lives here because both
halves need it; the JSON spec the parent writes carries it to the worker. The timing and memory helpers
and the pad-multiple sweep are in ``_throughput_measure.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import _common as C
import _throughput_measure as M
import numpy as np


@dataclass
class Plan:
    """How much to run per style: (warm-up steps, timed steps), inference rows and passes."""

    batch_size: int = 32
    baseline_eval_batch: int = (
        64  # the seed notebook's / a typical Trainer per_device_eval_batch_size
    )
    max_length: int = 512
    max_rows: int | None = None  # cap on the rows read (quick tiny runs)
    eval_rows: int = 2048  # rows held out for inference (never trained on)
    train: dict = field(default_factory=dict)  # style -> (warm-up, timed) steps
    infer: dict = field(default_factory=dict)  # style -> (rows, timed passes)
    peak_sizes: tuple = (1024, 2048, 3072)
    peak_reps: int = 5
    repeats: int = 1
    extras: bool = True  # ours: int8 throughput, bf16/int8 vs fp32 agreement
    seed_warmup_rows: int | None = (
        None  # seed style: warm up on a few rows (same 512 width) to save minutes
    )
    seed_micro_batch: int | None = (
        None  # seed style: accumulate the batch in micro-batches (RAM; same math per step)
    )


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple, set)):
        return list(o)
    return str(o)


def worker(style: str, spec_path: Path, out_path: Path) -> int:
    t_start = time.perf_counter()
    import torch

    spec = json.loads(spec_path.read_text())
    plan = Plan(**{k: (tuple(v) if k == "peak_sizes" else v) for k, v in spec["plan"].items()})
    workdir = Path(spec["workdir"])
    load_before = C.loadavg()

    from agnews_lora.config import AG_NEWS_LABELS, load_config
    from agnews_lora.data import encode, read_table
    from agnews_lora.modeling import load_tokenizer

    warm, steps = plan.train.get(style, (0, 0))
    cfg = load_config(
        None,
        [
            f"model.name_or_path={spec['model_path']}",
            f"model.max_length={spec['max_length']}",
            f"train.per_device_batch_size={plan.batch_size}",
            f"train.max_steps={warm + steps + 10}",
            f"data.cache_dir={spec['cache_dir']}",
            f"output_dir={workdir}",
            "train.log_every=1000000",
            "train.eval_every=1000000",
        ],
    )
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    t0 = time.perf_counter()
    train_table = read_table(workdir / "train.csv", AG_NEWS_LABELS)
    eval_table = read_table(workdir / "eval.csv", AG_NEWS_LABELS)
    train_enc = encode(train_table, tokenizer, cfg.model.max_length, cfg.data.cache_dir)
    eval_enc = encode(eval_table, tokenizer, cfg.model.max_length, cfg.data.cache_dir)
    load_seconds = time.perf_counter() - t0

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_work = time.perf_counter()
    if style == "pad_sweep":
        sweep = M.pad_sweep(spec, train_table, eval_table, workdir)
        out_path.write_text(json.dumps(sweep, default=_jsonable))
        return 0
    if style == "ours":
        res = _ours(cfg, plan, train_table, eval_table, device)
    else:
        res = _baseline(style, cfg, plan, tokenizer, train_enc, eval_enc, device)

    flop_model = C.FlopModel.from_model(res.pop("hf_config"), cfg.lora)
    step_lengths = res.pop("step_lengths")
    flops = sum(flop_model.train_flops(ls) for ls in step_lengths)
    train_seconds = res["train_seconds"]
    res["train_flops_per_s"] = flops / train_seconds
    res["train_mfu"] = res["train_flops_per_s"] / res["peak_flops"]
    res.update(
        {
            "style": style,
            "data_load_and_encode_seconds": round(load_seconds, 2),
            "startup_seconds": round(t_work - t_start, 2),
            "work_seconds": round(time.perf_counter() - t_work, 2),
            "loadavg_before": load_before,
            "loadavg_after": C.loadavg(),
            "device": str(device),
        }
    )
    out_path.write_text(json.dumps(res, default=_jsonable))
    return 0


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _baseline(style, cfg, plan: Plan, tokenizer, train_enc, eval_enc, device) -> dict:
    """The seed notebook (pad to max_length) or the Trainer default (pad to the batch max): fp32, random batches."""
    import torch
    from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup, set_seed

    from agnews_lora.batching import train_batches
    from agnews_lora.modeling import apply_lora, load_base_model

    max_length = cfg.model.max_length
    if style == "seed_notebook":
        collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    else:
        collator = DataCollatorWithPadding(
            tokenizer
        )  # padding=True: to the longest row of the batch

    def make_batch(enc, idx, with_labels=True):
        feats = [
            {
                "input_ids": enc.ids[i].tolist(),
                **({"labels": int(enc.labels[i])} if with_labels else {}),
            }
            for i in idx
        ]
        return {k: v.to(device) for k, v in collator(feats).items()}

    peak = M.peak("fp32", plan, device)
    set_seed(cfg.train.seed)
    model = apply_lora(load_base_model(cfg), cfg.lora).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay
    )
    warm, steps = plan.train[style]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * (warm + steps)), warm + steps)
    batches = train_batches(
        train_enc.lengths, plan.batch_size, cfg.train.seed, 0, group_by_length=False
    )
    lengths_all = train_enc.lengths

    def step(i, idx=None):
        if idx is None:
            small_warmup = style == "seed_notebook" and plan.seed_warmup_rows and i < warm
            idx = batches[i][: plan.seed_warmup_rows] if small_warmup else batches[i]
        micro = (
            plan.seed_micro_batch
            if style == "seed_notebook" and plan.seed_micro_batch
            else len(idx)
        )
        tokens = 0
        for start in range(0, len(idx), micro):
            part = idx[start : start + micro]
            batch = make_batch(train_enc, part)
            loss = model(**batch).loss * len(part) / len(idx)
            loss.backward()
            loss.item()
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return len(idx), tokens, int(batch["input_ids"].shape[1]), lengths_all[idx]

    times, rows, tokens, widths, step_lengths = M.train_measure(step, warm, steps)
    peak_after = M.peak("fp32", plan, device)
    res = M.timing_summary(times, rows, tokens, widths)
    if style != "seed_notebook":  # every seed batch already has the widest shape
        # peak memory over an epoch is set by its widest batch: the random batch holding the longest row
        widest = next(b for b in batches if lengths_all[b].max() == lengths_all.max())
        res["memory_probe_width"] = step(None, widest)[2]

    # inference: the unmerged PEFT model, fp32, no_grad, rows in their (random) order
    n_rows, passes = plan.infer[style]
    n_rows = min(n_rows, len(eval_enc))
    model.eval()
    bs = plan.baseline_eval_batch

    def infer_pass(idx_all):
        with torch.no_grad():
            for s in range(0, len(idx_all), bs):
                model(
                    **make_batch(eval_enc, idx_all[s : s + bs], with_labels=False)
                ).logits.float().cpu()

    infer_pass(np.arange(min(8, n_rows)))  # warm-up: one small batch
    pass_times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        infer_pass(np.arange(n_rows))
        pass_times.append(time.perf_counter() - t0)
    res.update(M.infer_summary(n_rows, pass_times, bs))
    res.update(M.memory(device))
    res.update(
        {
            "precision": "fp32",
            "peak_flops": max(peak["flops"], peak_after["flops"]),
            "peak_flops_detail": [peak, peak_after],
            "hf_config": model.config,
            "step_lengths": step_lengths,
            "inference_model": "unmerged PEFT (LoRA side branches)",
        }
    )
    return res


def _ours(cfg, plan: Plan, train_table, eval_table, device) -> dict:
    """The project's training loop (built by `training.setup`, as `train` builds it) and Predictor;
    only timed from outside."""
    from agnews_lora.batching import train_batches
    from agnews_lora.devices import resolve_precision
    from agnews_lora.export import fp32_for_export
    from agnews_lora.prediction import Predictor
    from agnews_lora.training import setup

    precision = resolve_precision(cfg.train.precision, device.type)
    peak = M.peak(precision, plan, device)
    cfg.run_name = "ours-run"
    loop = setup(cfg, progress=False, splits={"train": train_table, "validation": eval_table})
    acc, tokenizer, train_enc, eval_enc = loop.acc, loop.tokenizer, loop.train_enc, loop.val_enc
    lengths_all = train_enc.lengths
    multiple, max_length = cfg.train.pad_to_multiple_of, cfg.model.max_length

    def width_of(s: int) -> int:
        lens = lengths_all[np.concatenate(loop.micro_batches(s))]
        return min(max_length, -(-int(lens.max()) // multiple) * multiple)

    # Length-grouped batches differ a lot in width (a few hold the longest rows), so a window of consecutive
    # steps over- or under-samples the wide ones. Time an evenly spaced sample of the epoch's steps instead, and
    # warm up on one step of every width in it: a shape's first pass pays oneDNN set-up once per run, not per step.
    warm, steps = plan.train["ours"]
    sample = sorted({int(k * loop.steps_per_epoch / steps) for k in range(steps)})
    first_of_width: dict[int, int] = {}
    for s in sample:
        first_of_width.setdefault(width_of(s), s)
    warm_steps = list(first_of_width.values())
    warm_steps += sample[: max(0, warm - len(warm_steps))]
    schedule = warm_steps + sample

    def step(i):
        loop.step = (
            schedule[i] if i is not None else loop.step
        )  # data (and dropout) of that step of the epoch
        idx = np.concatenate(loop.micro_batches(loop.step))
        _, n_tokens, n_rows = loop.train_step()
        lens = lengths_all[idx]
        width = min(max_length, -(-int(lens.max()) // multiple) * multiple)
        return n_rows, n_tokens, width, lens

    times, rows, tokens, widths, step_lengths = M.train_measure(step, len(warm_steps), len(sample))
    peak_after = M.peak(precision, plan, device)
    res = M.timing_summary(times, rows, tokens, widths)
    res["train_timed_steps"] = (
        f"{len(sample)} steps evenly spaced over epoch 0 (after {len(warm_steps)} warm-up steps, one per width)"
    )
    # peak memory over an epoch is set by its widest batch: run the real train_step on it once (untimed)
    epoch_batches = train_batches(
        lengths_all, cfg.train.per_device_batch_size, cfg.train.seed, 0, cfg.train.group_by_length
    )
    widest = max(epoch_batches, key=lambda b: (int(lengths_all[b].max()), len(b)))
    loop.micro_batches = lambda step: [widest]
    res["memory_probe_width"] = step(None)[2]
    del loop.micro_batches

    # inference: the fp32 merged model exactly as export writes merged/, prepared as Predictor.from_run does
    peft_model = acc.unwrap_model(loop.model, keep_fp32_wrapper=False)
    loop = None  # frees the training state before the inference timing
    merged = fp32_for_export(cfg, peft_model).merge_and_unload()
    del peft_model
    served = merged
    if (
        resolve_precision("auto", device.type) == "bf16"
    ):  # as Predictor.from_run: the whole model in bf16
        import copy

        from agnews_lora.prediction import prepare_for_inference

        served = prepare_for_inference(copy.deepcopy(merged), "bf16")
    predictor = Predictor.from_model(
        served,
        tokenizer,
        cfg.data.label_names,
        cfg.model.max_length,
        batch_size=cfg.train.eval_batch_size,
    )
    n_rows, passes = plan.infer["ours"]
    texts = eval_table.texts[:n_rows]
    predictor.logits(texts)  # warm-up: sees every padded shape once
    pass_times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        logits, _ = predictor.logits(texts)
        pass_times.append(time.perf_counter() - t0)
    res.update(M.infer_summary(len(texts), pass_times, cfg.train.eval_batch_size))
    res.update(
        M.memory(device)
    )  # peak memory of the measured work only; the extras below add copies
    res.update(
        {
            "precision": precision,
            "peak_flops": max(peak["flops"], peak_after["flops"]),
            "peak_flops_detail": [peak, peak_after],
            "hf_config": merged.config,
            "step_lengths": step_lengths,
            "inference_model": "merged (no LoRA branches), Predictor",
            "infer_precision": predictor.precision,
        }
    )

    if plan.extras and device.type == "cpu":
        res.update(_extras(predictor, merged, tokenizer, cfg, eval_enc, texts, logits, device))
    return res


def _extras(predictor, merged, tokenizer, cfg, eval_enc, texts, logits_bf16, device) -> dict:
    """int8 dynamic quantisation speed, and how often bf16 / int8 predictions agree with fp32."""
    import torch

    from agnews_lora.prediction import Predictor, batched_logits, encode_texts

    enc, _ = encode_texts(tokenizer, texts, cfg.model.max_length)
    _, logits_fp32 = batched_logits(
        merged,
        enc,
        cfg.train.eval_batch_size,
        predictor.pad_id,
        device,
        max_length=cfg.model.max_length,
    )
    q = torch.ao.quantization.quantize_dynamic(merged, {torch.nn.Linear}, dtype=torch.qint8)
    qp = Predictor.from_model(
        q,
        tokenizer,
        cfg.data.label_names,
        cfg.model.max_length,
        cfg.train.eval_batch_size,
        quantized=True,
    )
    qp.logits(texts)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        logits_int8, _ = qp.logits(texts)
        times.append(time.perf_counter() - t0)
    top = logits_fp32.argmax(1)
    return {
        "infer_int8_samples_per_s": len(texts) / float(np.median(times)),
        "infer_agreement_bf16_vs_fp32": float((logits_bf16.argmax(1) == top).mean()),
        "infer_agreement_int8_vs_fp32": float((logits_int8.argmax(1) == top).mean()),
        "infer_max_abs_logit_diff_bf16": float(np.abs(logits_bf16 - logits_fp32).max()),
    }
