"""The handlers of the `agnews-lora` commands (``cmd_*``): run the library, print the result.

The parsers that route to them, logging setup and `main` are in `agnews_lora.cli`.
"""

from __future__ import annotations

import logging
import os
import sys

from .errors import TrainingInterrupted, UserError

log = logging.getLogger("agnews_lora")


def is_main_process() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def _out(text: str = "") -> None:
    if is_main_process():
        print(text, flush=True)


def cmd_train(args) -> int:
    from .config import load_config

    if args.resume and (args.config or args.set or args.output_dir):
        raise UserError(
            "--resume continues a run with its saved config.yaml; do not combine it with --config "
            "/ --set / --output-dir"
        )
    cfg = None
    if not args.resume:
        cfg = load_config(args.config, args.set)
        if args.output_dir:
            cfg.output_dir = args.output_dir
    from .training import train

    run = train(cfg, resume=args.resume, progress=not args.no_progress)
    s = run.summary
    if s:
        p, b, tm = s["params"], s["best"], s["timings"]
        _out(f"\nrun            {run.dir}")
        _out(f"base model     {s['base_model']}")
        _out(
            f"trainable      {p['trainable']:,} / budget {s['budget']['max_trainable_params']:,}  "
            f"(LoRA {p['lora']:,} + head {p['head']:,})"
        )
        _out(
            f"steps          {s['steps']} ({s['epochs']} epochs, global batch "
            f"{s['global_batch_size']}, {s['world_size']} process(es), {s['precision']}"
            f"{', fast CPU dropout' if str(s.get('dropout', '')).startswith('fast') else ''})"
        )
        _out(
            f"best val       accuracy {b['val_accuracy']:.4f}  macro-F1 "
            f"{b.get('val_macro_f1', float('nan')):.4f}  at step {b['step']}"
        )
        _out(
            f"train time     {tm['train_seconds']:.1f} s  ({tm['train_samples_per_s']:.1f} samples/s)"
        )
        if s.get("schedule"):  # train.time_budget
            sc = s["schedule"]
            wall = f"; this call took {tm['wall_seconds']:.0f} s" if "wall_seconds" in tm else ""
            _out(
                f"time budget    {sc['time_budget']}: {sc['total_steps']:,} of "
                f"{sc['configured_steps']:,} configured steps planned{wall}"
            )
        _out(
            "written        config.yaml metrics.jsonl summary.json adapter/ merged/ plots/ "
            "report.html"
        )
        _out(f"next           agnews-lora evaluate {run.dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_run

    m = evaluate_run(
        args.run_dir,
        args.data,
        trust_pickle=args.trust_pickle,
        quantize=args.quantize,
        overwrite=args.overwrite,
        backend=args.backend,
    )
    out = os.path.join(args.run_dir, "eval", m["split"])
    _out(f"split          {m['split']} ({m['rows']:,} rows, {m['truncated_rows']} truncated)")
    _out(f"accuracy       {m['accuracy']:.4f}")
    _out(f"macro-F1       {m['macro_f1']:.4f}")
    _out("per-class F1   " + "  ".join(f"{k} {v:.4f}" for k, v in m["per_class_f1"].items()))
    backend = "" if m["backend"] == "torch" else f"{m['backend']} "
    _out(
        f"speed          {m['samples_per_s']:.1f} samples/s "
        f"({backend}{m['precision_used']}{', int8' if m['quantized'] else ''})"
    )
    _out(
        f"written        {out}/metrics.json classification_report.txt confusion_matrix.png; "
        f"{os.path.join(args.run_dir, 'report.html')}"
    )
    return 0


def cmd_report(args) -> int:
    from .run_report import write_run_report

    if args.max_rows < 1:
        raise UserError("--max-rows must be at least 1")
    path = write_run_report(args.run_dir, max_rows=args.max_rows)
    _out(f"written        {path}")
    return 0


def cmd_predict(args) -> int:
    from .prediction import (
        Predictor,
        check_output,
        read_texts,
        softmax,
        write_submission,
    )

    check_output(args.output, args.overwrite, args.input)  # before minutes of work, not after
    predictor = Predictor.from_run(args.run_dir, quantize=args.quantize, backend=args.backend)
    texts = read_texts(args.input, trust_pickle=args.trust_pickle)
    logits, truncated = predictor.logits(texts)
    preds = logits.argmax(axis=1)
    write_submission(
        args.output,
        preds,
        softmax(logits) if args.probabilities else None,
        predictor.label_names if args.label_names else None,
        overwrite=args.overwrite,
    )
    counts = {n: int((preds == i).sum()) for i, n in enumerate(predictor.label_names)}
    _out(f"wrote {len(preds):,} predictions to {args.output} ({sum(truncated)} texts truncated)")
    _out("per class      " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_plan(args) -> int:
    import json

    from .plan_format import format_plan
    from .planning import plan

    p = plan(args.model, args.budget, _ranks(args.ranks), args.num_labels)
    if args.json:
        if p.note:
            log.warning("note: %s", p.note)
        print(json.dumps([lay.to_dict() for lay in p.layouts], indent=2), flush=True)
    else:
        print(format_plan(p, args.top), flush=True)
    return 0


def _ranks(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--ranks expects comma-separated integers, got '{text}'") from None


def cmd_sweep(args) -> int:
    from pathlib import Path

    from .sweep import load_sweep, run_sweep
    from .sweep_report import table

    sweep = load_sweep(args.sweep_file, args.output_dir)
    log.info("sweep %s: %d children -> %s", sweep.path, len(sweep.children), sweep.output_dir)
    try:
        rows = run_sweep(sweep, progress=not args.no_progress)
    except TrainingInterrupted as e:
        print(
            f"stopped: {e}; rerun `agnews-lora sweep {args.sweep_file}` to continue "
            f"(finished children are skipped, the interrupted one resumes)",
            file=sys.stderr,
        )
        return 128 + int(e.signum)
    out = Path(sweep.output_dir)
    print(
        "\n" + "\n".join(table(sweep, rows)) + f"\n\nwritten        {out / 'summary.csv'}  "
        f"{out / 'pareto.png'}  {out / 'summary.md'}",
        flush=True,
    )
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        print(
            f"{len(failed)} of {len(rows)} children failed (see the error column); rerun the "
            "sweep to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_serve(args) -> int:
    from .serve.limits import ServeOptions
    from .serve.server import serve

    options = ServeOptions(
        args.max_batch_size,
        args.max_wait_ms,
        args.max_texts,
        args.max_body_bytes,
        args.max_queue_texts,
        not args.no_batching,
        args.workers,
        args.read_timeout,
    )
    return serve(
        args.run_dir,
        options,
        args.host,
        args.port,
        args.precision,
        args.quantize,
        args.threads,
        args.graceful_timeout,
        args.access_log,
        args.verbose,
        backend=args.backend,
    )


def cmd_export(args) -> int:
    import json
    from pathlib import Path

    from .onnx_export import export_model

    int8 = args.quantize == "int8"
    path = export_model(args.run_dir, args.format, int8, overwrite=args.overwrite)
    info = json.loads((Path(path) / "export.json").read_text(encoding="utf-8"))
    c, tol = info["check"], info["check"]["tolerance"]
    model = "model.onnx" if args.format == "onnx" else "model.xml + model.bin"
    _out(
        f"written        {path}/ ({model}, tokenizer, config.json, export.json) "
        f"in {info['export_seconds']:.1f} s"
    )
    _out(
        f"checked        against PyTorch fp32 on {c['rows']} {c['rows_from']} rows: "
        f"same label on {c['label_agreement']:.2%}, on {c['decided_agreement']:.2%} of the "
        f"{c['decided_rows']} PyTorch decides by >= {tol['tie_margin']:g} "
        f"(needs >= {tol['min_agreement']:.0%})"
    )
    _out(
        f"               max |Δ prob| {c['max_abs_prob_diff']:.2g} "
        f"(needs <= {tol['max_prob_diff']:g}), max |Δ logit| {c['max_abs_logit_diff']:.2g}"
    )
    flags = f"--backend {args.format}" + (" --quantize int8" if int8 else "")
    _out(f"next           agnews-lora evaluate {args.run_dir} {flags}")
    return 0


def cmd_push(args) -> int:
    from .hub import push_run

    url = push_run(args.run_dir, args.repo_id, args.kind, args.private)
    _out(f"pushed         {args.run_dir}/{args.kind}/ (model card README.md included) -> {url}")
    return 0


def cmd_tune(args) -> int:
    from .tune import cmd_tune as run_tune

    return run_tune(args)
