"""The options of the larger `agnews-lora` subcommands (push, export, tune, plan, sweep, serve) and
the shared ``--backend`` / ``--int8`` flags; `agnews_lora.cli.build_parser` puts them together."""

from __future__ import annotations

import argparse

from .commands import (
    cmd_export,
    cmd_plan,
    cmd_push,
    cmd_serve,
    cmd_sweep,
    cmd_tune,
)


def add_push(sp: argparse.ArgumentParser) -> None:
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


def add_int8(sp: argparse.ArgumentParser, help: str) -> None:
    """``--quantize int8``, and ``--int8`` as its shorthand (one spelling, both accepted)."""
    sp.add_argument("--quantize", choices=["int8"], help=help)
    sp.add_argument(
        "--int8",
        dest="quantize",
        action="store_const",
        const="int8",
        help="shorthand for --quantize int8",
    )


def add_backend(sp: argparse.ArgumentParser, verb: str) -> None:
    sp.add_argument(
        "--backend",
        default="torch",
        metavar=BACKEND_CHOICES,
        help=f"what to {verb} with: torch (the run's merged/ model, default), or the "
        "run's ONNX Runtime / OpenVINO export (fp32, CPU; made by "
        "`agnews-lora export`)",
    )
    add_int8(sp, "int8: torch's dynamic int8 quantisation (CPU), or the runtime's int8 export")


def add_export(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("run_dir", help="a finished run directory (with merged/ and summary.json)")
    sp.add_argument(
        "--format",
        required=True,
        metavar="{onnx,openvino}",
        help="onnx: ONNX Runtime; openvino: OpenVINO IR",
    )
    add_int8(sp, "int8 weights (ONNX Runtime dynamic quantisation / NNCF weight compression)")
    sp.add_argument(
        "--overwrite", action="store_true", help="replace an existing export of this format"
    )
    sp.set_defaults(func=cmd_export)


def add_tune(sp: argparse.ArgumentParser) -> None:
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


def add_plan(sp: argparse.ArgumentParser) -> None:
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


def add_sweep(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "sweep_file", metavar="SWEEP_YAML", help="sweep file, e.g. configs/sweeps/rank.yaml"
    )
    sp.add_argument(
        "--output-dir",
        help="sweep directory (default: the file's output_dir, else sweeps/<file stem>)",
    )
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_sweep)


def add_serve(s: argparse.ArgumentParser) -> None:
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
    add_backend(s, "serve")
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
