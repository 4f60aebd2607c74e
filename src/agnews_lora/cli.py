"""`agnews-lora` command line: a thin shell over the library.

Exit codes: 0 ok, 2 bad input / usage / budget, 1 unexpected failure, 128+N interrupted by signal N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .errors import TrainingInterrupted, UserError

log = logging.getLogger("agnews_lora")


def _is_main_process() -> bool:
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = logging.DEBUG if verbose else logging.INFO
    if not _is_main_process():
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    # PEFT, saving an adapter of a local/package model: the tokenizer is saved beside it anyway
    warnings.filterwarnings("ignore", message="Could not find a config file in .*vocabulary was not modified")
    # torch 2.13 marks the quantized-tensor API behind dynamic int8 (--quantize int8) as deprecated
    warnings.filterwarnings("ignore", message="torch.quantize_per_tensor.*deprecated")
    quiet_libraries()


def quiet_libraries() -> None:
    """No progress bars or info chatter from transformers / datasets (our own output stays)."""
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def _out(text: str = "") -> None:
    if _is_main_process():
        print(text, flush=True)


# ---------------------------------------------------------------------------------------------
# handlers


def cmd_train(args) -> int:
    from .config import load_config

    if args.resume and (args.config or args.set or args.output_dir):
        raise UserError("--resume continues a run with its saved config.yaml; do not combine it with --config / --set / --output-dir")
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
        _out(f"trainable      {p['trainable']:,} / budget {s['budget']['max_trainable_params']:,}  (LoRA {p['lora']:,} + head {p['head']:,})")
        _out(f"steps          {s['steps']} ({s['epochs']} epochs, global batch {s['global_batch_size']}, {s['world_size']} process(es), {s['precision']}"
             f"{', fast CPU dropout' if str(s.get('dropout', '')).startswith('fast') else ''})")
        _out(f"best val       accuracy {b['val_accuracy']:.4f}  macro-F1 {b.get('val_macro_f1', float('nan')):.4f}  at step {b['step']}")
        _out(f"train time     {tm['train_seconds']:.1f} s  ({tm['train_samples_per_s']:.1f} samples/s)")
        _out("written        config.yaml metrics.jsonl summary.json adapter/ merged/ plots/")
        _out(f"next           agnews-lora evaluate {run.dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_run

    m = evaluate_run(args.run_dir, args.data, trust_pickle=args.trust_pickle, quantize=args.quantize)
    out = os.path.join(args.run_dir, "eval", m["split"])
    _out(f"split          {m['split']} ({m['rows']:,} rows, {m['truncated_rows']} truncated)")
    _out(f"accuracy       {m['accuracy']:.4f}")
    _out(f"macro-F1       {m['macro_f1']:.4f}")
    _out("per-class F1   " + "  ".join(f"{k} {v:.4f}" for k, v in m["per_class_f1"].items()))
    _out(f"speed          {m['samples_per_s']:.1f} samples/s ({m['precision_used']}{', int8' if m['quantized'] else ''})")
    _out(f"written        {out}/metrics.json classification_report.txt confusion_matrix.png")
    return 0


def cmd_predict(args) -> int:
    from .prediction import Predictor, read_texts, write_submission

    predictor = Predictor.from_run(args.run_dir, quantize=args.quantize)
    texts = read_texts(args.input, trust_pickle=args.trust_pickle)
    logits, truncated = predictor.logits(texts)
    preds = logits.argmax(axis=1)
    from .prediction import softmax

    write_submission(args.output, preds, softmax(logits) if args.probabilities else None,
                     predictor.label_names if args.label_names else None)
    counts = {n: int((preds == i).sum()) for i, n in enumerate(predictor.label_names)}
    _out(f"wrote {len(preds):,} predictions to {args.output} ({sum(truncated)} texts truncated)")
    _out("per class      " + "  ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="more log output")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of unexpected errors")
    p = argparse.ArgumentParser(prog="agnews-lora", description="LoRA fine-tuning for AG News under a parameter budget.",
                                parents=[common])
    p.set_defaults(verbose=False, debug=False)
    sub = p.add_subparsers(dest="command", required=True)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **k: _add(*a, parents=[common], **k)  # every subcommand takes --verbose / --debug

    t = sub.add_parser("train", help="train a LoRA classifier; writes runs/<name>/")
    t.add_argument("--config", help="YAML config (default: built-in defaults = configs/default.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable), e.g. lora.r=8")
    t.add_argument("--output-dir", help="parent directory of the run directory (config key output_dir)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a finished run on its test split (or --data FILE)")
    e.add_argument("run_dir")
    e.add_argument("--data", help="labelled CSV / JSONL / Parquet file (default: the official test split)")
    e.add_argument("--trust-pickle", action="store_true", help="allow a .pkl --data file (pickles can run code)")
    e.add_argument("--quantize", choices=["int8"], help="evaluate the dynamically int8-quantised model (CPU)")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="write a Kaggle-style ID,Label CSV for unlabelled texts")
    pr.add_argument("run_dir")
    pr.add_argument("--input", required=True, help="CSV / JSONL / Parquet / pickled datasets.Dataset with a 'text' column")
    pr.add_argument("--output", required=True, help="CSV to write (ID,Label)")
    pr.add_argument("--trust-pickle", action="store_true", help="allow loading a .pkl input (pickles can run code)")
    pr.add_argument("--probabilities", action="store_true", help="add one p_<label> column per class")
    pr.add_argument("--label-names", action="store_true", help="add a LabelName column")
    pr.add_argument("--quantize", choices=["int8"], help="predict with the dynamically int8-quantised model (CPU)")
    pr.set_defaults(func=cmd_predict)

    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """Subcommands that live in their own modules (plan, sweep, serve) register themselves here."""
    found = []
    for mod in ("planning", "sweep", "serving", "tune"):
        try:
            module = __import__(f"agnews_lora.{mod}", fromlist=["register_cli"])
        except ModuleNotFoundError as e:
            if e.name != f"agnews_lora.{mod}":
                raise
            continue
        found.append(module.register_cli)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    _setup_logging(args.verbose)

    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"stopped: {e}; continue with `agnews-lora train --resume {e.run_dir}`", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.debug:
            raise
        print(f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
