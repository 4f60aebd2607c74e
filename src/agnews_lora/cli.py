"""`agnews-lora` command line: a thin shell over the library.

Exit codes: 0 ok, 2 bad input / usage / budget, 1 unexpected failure, 128+N interrupted by signal N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .commands import (
    cmd_evaluate,
    cmd_export,
    cmd_plan,
    cmd_predict,
    cmd_push,
    cmd_report,
    cmd_serve,
    cmd_sweep,
    cmd_train,
    cmd_tune,
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
    # PEFT, saving an adapter of a local/package model: the tokenizer is saved beside it anyway
    warnings.filterwarnings(
        "ignore", message="Could not find a config file in .*vocabulary was not modified"
    )
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
    _add_backend(e, "evaluate")
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
    _add_backend(pr, "predict")
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

    _add_plan(
        command("plan", "list LoRA layouts and their exact trainable-parameter counts vs a budget")
    )
    _add_sweep(
        command(
            "sweep", "train a grid / list of config overrides; summary.csv, pareto.png, summary.md"
        )
    )
    _add_serve(
        command("serve", "serve a finished run over HTTP (POST /v1/classify) with micro-batching")
    )
    _add_tune(command("tune", "budget-aware hyperparameter search on Optuna (shared study)"))
    _add_export(
        command(
            "export",
            "export a finished run to ONNX Runtime or OpenVINO (optionally "
            "int8), checked against PyTorch; RUN_DIR/export/<format>[-int8]/",
        )
    )
    _add_push(
        command(
            "push",
            "upload a finished run's merged/ (or adapter/) model and its model "
            "card to the Hugging Face Hub",
        )
    )
    return p


def _add_push(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run_dir", help="a finished run directory")
    sp.add_argument(
        "--repo-id", required=True, help="Hub repo: NAME or USER/NAME (created if missing)"
    )
    what = sp.add_mutually_exclusive_group()
    what.add_argument(
        "--merged",
        dest="kind",
        action="store_const",
        const="merged",
        help="push merged/: a plain transformers model (default)",
    )
    what.add_argument(
        "--adapter",
        dest="kind",
        action="store_const",
        const="adapter",
        help="push adapter/: the PEFT adapter (LoRA + head) for the base model",
    )
    sp.add_argument("--private", action="store_true", help="create the repo private")
    sp.set_defaults(func=cmd_push, kind="merged")


BACKEND_CHOICES = "{torch,onnx,openvino}"  # runtimes.BACKENDS; not imported: keeps --help fast


def _add_int8(sp: argparse.ArgumentParser, help: str) -> None:
    """``--quantize int8``, and ``--int8`` as its shorthand (one spelling, both accepted)."""
    sp.add_argument("--quantize", choices=["int8"], help=help)
    sp.add_argument(
        "--int8",
        dest="quantize",
        action="store_const",
        const="int8",
        help="shorthand for --quantize int8",
    )


def _add_backend(sp: argparse.ArgumentParser, verb: str) -> None:
    sp.add_argument(
        "--backend",
        default="torch",
        metavar=BACKEND_CHOICES,
        help=f"what to {verb} with: torch (the run's merged/ model, default), or the "
        "run's ONNX Runtime / OpenVINO export (fp32, CPU; made by "
        "`agnews-lora export`)",
    )
    _add_int8(sp, "int8: torch's dynamic int8 quantisation (CPU), or the runtime's int8 export")


def _add_export(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run_dir", help="a finished run directory (with merged/ and summary.json)")
    sp.add_argument(
        "--format",
        required=True,
        metavar="{onnx,openvino}",
        help="onnx: ONNX Runtime; openvino: OpenVINO IR",
    )
    _add_int8(sp, "int8 weights (ONNX Runtime dynamic quantisation / NNCF weight compression)")
    sp.add_argument(
        "--overwrite", action="store_true", help="replace an existing export of this format"
    )
    sp.set_defaults(func=cmd_export)


def _add_tune(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "tune_file", metavar="TUNE_YAML", help="tune file, e.g. configs/tune/offline-minilm.yaml"
    )
    sp.add_argument(
        "--storage", help="Optuna database URL (default: sqlite:///<study dir>/study.db)"
    )
    sp.add_argument("--n-trials", type=int, help="trials in the study, all workers together")
    sp.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long"
    )
    sp.add_argument(
        "--output-dir", help="study directory (default: the file's output_dir, else tunes/<stem>)"
    )
    sp.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override the base config"
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_tune)


def _add_plan(sp: argparse.ArgumentParser) -> None:
    from .config import AG_NEWS_LABELS, BudgetConfig, ModelConfig
    from .planning import DEFAULT_RANKS

    sp.add_argument(
        "--budget",
        type=int,
        default=BudgetConfig().max_trainable_params,
        help="trainable-parameter budget (default %(default)s)",
    )
    sp.add_argument(
        "--model",
        default=ModelConfig().name_or_path,
        help="Hub id, local model directory or package:... (default %(default)s); "
        "only its config is read",
    )
    sp.add_argument("--json", action="store_true", help="print every layout as a JSON list")
    sp.add_argument(
        "--ranks",
        default=",".join(map(str, DEFAULT_RANKS)),
        help="LoRA ranks to try (default %(default)s)",
    )
    sp.add_argument(
        "--num-labels",
        type=int,
        default=len(AG_NEWS_LABELS),
        help="classes of the head (default %(default)s)",
    )
    sp.add_argument(
        "--top", type=int, default=10, help="fitting layouts listed first (default %(default)s)"
    )
    sp.set_defaults(func=cmd_plan)


def _add_sweep(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "sweep_file", metavar="SWEEP_YAML", help="sweep file, e.g. configs/sweeps/rank.yaml"
    )
    sp.add_argument(
        "--output-dir",
        help="sweep directory (default: the file's output_dir, else sweeps/<file stem>)",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_sweep)


def _add_serve(s: argparse.ArgumentParser) -> None:
    from .serve.limits import ServeOptions

    s.add_argument(
        "run_dir", help="a finished run directory (runs/<name>, with merged/ and summary.json)"
    )
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument(
        "--port", type=int, default=8000, help="TCP port (0 = any free port; default 8000)"
    )
    d = ServeOptions()
    s.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="texts per micro-batch (run as one or a few length-sorted forward passes)",
    )
    s.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help="how long the oldest queued request waits for others to join its batch",
    )
    s.add_argument("--max-texts", type=int, default=d.max_texts, help="texts per request")
    s.add_argument(
        "--max-body-bytes", type=int, default=d.max_body_bytes, help="request body size cap"
    )
    s.add_argument(
        "--max-queue-texts",
        type=int,
        default=d.max_queue_texts,
        help="queued texts before new requests get 503 (back-pressure)",
    )
    s.add_argument(
        "--no-batching", action="store_true", help="one request per forward pass (baseline)"
    )
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="inference precision (auto: bf16 where the CPU/GPU runs it fast)",
    )
    _add_backend(s, "serve")
    s.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="micro-batches that may run at the same time, each in its own thread "
        "(default 0 = auto: 2 on a CPU with 2+ cores, 1 on a GPU)",
    )
    s.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of every batch, fixed (default 0: threads follow "
        "the load: a batch that runs alone gets all of torch's threads; under "
        "load each worker gets torch's choice minus one, shared out)",
    )
    s.add_argument(
        "--read-timeout",
        type=float,
        default=d.read_timeout_s,
        help="seconds a client may take to send a whole request (headers and body) "
        "before it gets 408 and is disconnected (default %(default)s)",
    )
    s.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds to let in-flight requests finish after SIGTERM / Ctrl-C",
    )
    s.add_argument(
        "--access-log", action="store_true", help="log every request (uvicorn access log)"
    )
    s.set_defaults(func=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    _setup_logging(args.verbose)
    from .model_card import record_command  # the command line shown in model cards

    record_command(sys.argv[1:] if argv is None else list(argv))

    try:
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
