"""`agnews-lora` command line: a thin shell over the library.

Exit codes: 0 ok, 2 bad input / usage / budget, 1 unexpected failure, 128+N interrupted by signal N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .cli_options import (
    add_backend,
    add_export,
    add_plan,
    add_push,
    add_serve,
    add_sweep,
    add_tune,
)
from .commands import (
    cmd_evaluate,
    cmd_predict,
    cmd_report,
    cmd_train,
    is_main_process,
)
from .errors import TrainingInterrupted, UserError

log = logging.getLogger("agnews_lora")


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    level = logging.DEBUG if verbose else logging.INFO
    if not is_main_process():
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
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


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help="more log output"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks of unexpected errors",
    )
    p = argparse.ArgumentParser(
        prog="agnews-lora",
        description="LoRA fine-tuning for AG News under a parameter budget.",
        parents=[common],
    )
    p.set_defaults(verbose=False, debug=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])  # every command takes -v / --debug

    t = command("train", help="train a LoRA classifier; writes runs/<name>/")
    t.add_argument(
        "--config", help="YAML config (default: built-in defaults = configs/default.yaml)"
    )
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. lora.r=8",
    )
    t.add_argument(
        "--output-dir", help="parent directory of the run directory (config key output_dir)"
    )
    t.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = command("evaluate", "score a finished run on its test split (or --data FILE)")
    e.add_argument("run_dir")
    e.add_argument(
        "--data", help="labelled CSV / JSONL / Parquet file (default: the official test split)"
    )
    e.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pkl --data file (pickles can run code)",
    )
    add_backend(e, "evaluate")
    e.add_argument(
        "--overwrite",
        action="store_true",
        help="let --data replace the held-out results in eval/test/",
    )
    e.set_defaults(func=cmd_evaluate)

    pr = command("predict", "write a Kaggle-style ID,Label CSV for unlabelled texts")
    pr.add_argument("run_dir")
    pr.add_argument(
        "--input",
        required=True,
        help="CSV / JSONL / Parquet / pickled datasets.Dataset with a 'text' column",
    )
    pr.add_argument("--output", required=True, help="CSV to write (ID,Label)")
    pr.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow loading a .pkl input (pickles can run code)",
    )
    pr.add_argument(
        "--probabilities", action="store_true", help="add one p_<label> column per class"
    )
    pr.add_argument("--label-names", action="store_true", help="add a LabelName column")
    add_backend(pr, "predict")
    pr.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    pr.set_defaults(func=cmd_predict)

    r = command("report", "(re)write RUN_DIR/report.html: a self-contained page about the run")
    r.add_argument("run_dir", help="a finished run directory")
    r.add_argument(
        "--max-rows",
        type=int,
        default=1000,
        help="validation rows predicted for the examples (default %(default)s)",
    )
    r.set_defaults(func=cmd_report)

    add_plan(
        command("plan", "list LoRA layouts and their exact trainable-parameter counts vs a budget")
    )
    add_sweep(
        command(
            "sweep", "train a grid / list of config overrides; summary.csv, pareto.png, summary.md"
        )
    )
    add_serve(
        command("serve", "serve a finished run over HTTP (POST /v1/classify) with micro-batching")
    )
    add_tune(command("tune", "budget-aware hyperparameter search on Optuna (shared study)"))
    add_export(
        command(
            "export",
            "export a finished run to ONNX Runtime or OpenVINO (optionally "
            "int8), checked against PyTorch; RUN_DIR/export/<format>[-int8]/",
        )
    )
    add_push(
        command(
            "push",
            "upload a finished run's merged/ (or adapter/) model and its model "
            "card to the Hugging Face Hub",
        )
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    _setup_logging(args.verbose)
    from .model_card import recording_command  # the command line shown in model cards

    try:
        with recording_command(sys.argv[1:] if argv is None else list(argv)):
            return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(
            f"stopped: {e}; continue with `agnews-lora train --resume {e.run_dir}`", file=sys.stderr
        )
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.debug:
            raise
        print(
            f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
