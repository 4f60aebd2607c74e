"""CPU inference runtimes for an exported run: ONNX Runtime and OpenVINO backends.

A backend turns padded token ids into logits and nothing else::

    backend.logits(input_ids, attention_mask)   # int64 [B, T] x 2 -> float32 [B, num_labels]

`OnnxBackend` and `OpenVinoBackend` load an export directory written by
`agnews_lora.onnx_export.export_model` (``RUN_DIR/export/<format>[-int8]/``); `open_export` finds,
checks and opens a run's export (`agnews_lora.backends.load_backend` is the one entry point for
every backend, torch included). Both runtimes are optional extras:
``pip install 'agnews-lora[onnx]'`` / ``pip install 'agnews-lora[openvino]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import shlex
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError

BACKENDS = ("torch", "onnx", "openvino")  # the names `--backend` accepts (the one list)
FORMATS = ("onnx", "openvino")  # what `export` writes; each is also a backend name
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "openvino": "openvino",
    "nncf": "openvino",
}
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
RUNTIME_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}  # what running an export needs


def require(module: str, extra: str | None = None):
    """Import an optional package, or a UserError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = extra or EXTRAS.get(module.split(".")[0], module)
        raise UserError(
            f"'{module}' is not installed: pip install 'agnews-lora[{extra}]'"
        ) from None


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}' (choices: {', '.join(BACKENDS)})")
    return name


def export_name(fmt: str, int8: bool) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}' (choices: {', '.join(FORMATS)})")
    return fmt + ("-int8" if int8 else "")


def export_dir(run_dir: str | Path, fmt: str, int8: bool = False) -> Path:
    """Where `export_model` writes, and backends read: ``RUN_DIR/export/<format>[-int8]``."""
    return Path(run_dir) / "export" / export_name(fmt, int8)


def read_export_info(path: str | Path, fmt: str) -> dict:
    """``export.json`` of an export directory, or a UserError saying how to make one."""
    path = Path(path)
    info_path = path / "export.json"
    if not (path / MODEL_FILES[fmt]).is_file() or not info_path.is_file():
        raise UserError(
            f"no {fmt} export in '{path}'; write one with "
            f"`agnews-lora export RUN_DIR --format {fmt}` (add --quantize int8 for int8)"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"'{info_path}' is corrupt (not valid JSON); export again") from None
    if info.get("format") != fmt:
        raise UserError(f"'{path}' holds a {info.get('format')} export, not {fmt}")
    return info


def _feeds(names: Sequence[str], input_ids: np.ndarray, attention_mask: np.ndarray) -> dict:
    ids = np.ascontiguousarray(input_ids, dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
    }
    if "token_type_ids" in names:  # BERT-style graphs that take segment ids: one segment
        feeds["token_type_ids"] = np.zeros_like(ids)
    unknown = set(names) - set(feeds)
    if unknown:
        raise UserError(
            f"the exported model wants inputs {sorted(unknown)} that agnews-lora does not make"
        )
    return {k: v for k, v in feeds.items() if k in names}


class OnnxBackend:
    """ONNX Runtime (CPU execution provider) on ``PATH/model.onnx``; ``threads``: None = default."""

    def __init__(self, path: str | Path, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = Path(path)
        self.info = read_export_info(self.path, "onnx")
        self.kind, self.quantized = "onnx", bool(self.info.get("int8"))
        self.name = export_name("onnx", self.quantized)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path / "model.onnx"), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001 - any failure of the library: one line
            raise UserError(
                f"'{self.path}': ONNX Runtime cannot load model.onnx "
                f"({type(e).__name__}: {str(e)[:120]}); export again"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = _feeds(self.input_names, input_ids, attention_mask)
        with _runtime_call(self.kind, self.name):
            out = self.session.run(None, feeds)[0]
        return np.asarray(out, dtype=np.float32)


class OpenVinoBackend:
    """OpenVINO on ``PATH/model.xml``, compiled for the CPU with fp32 inference precision.

    fp32 is forced (OpenVINO would pick bf16 on a CPU that has it) so that the model run is the
    one whose predictions the export checked against PyTorch. A compiled model runs as many
    inferences at once as it has *streams*; each calling thread has its own infer request per
    compiled model. ``threads``: threads per inference (None: OpenVINO's choice), ``streams``:
    inferences that may run at once (``serve --workers 2`` calls from two threads: with one stream
    the second call would wait for the first). `use_threads` switches the calling thread to
    another (threads, streams) compiled model, so that serving's threads can follow the load.
    """

    def __init__(self, path: str | Path, threads: int | None = None, streams: int = 1):
        ov = require("openvino")
        self.path = Path(path)
        self.info = read_export_info(self.path, "openvino")
        self.kind, self.quantized = "openvino", bool(self.info.get("int8"))
        self.name = export_name("openvino", self.quantized)
        self._lock = threading.Lock()
        self._compiled: dict[tuple[int | None, int], object] = {}
        self._local = threading.local()
        try:
            self._core = ov.Core()
            self._model = self._core.read_model(str(self.path / "model.xml"))
        except Exception as e:  # noqa: BLE001 - any failure of the library: one line
            raise self._load_error(e) from None
        self._default = (threads, streams)  # compiled on first use (`serve` compiles its own)
        self.input_names = [p.get_any_name() for p in self._model.inputs]

    @property
    def compiled(self):
        """The model compiled for the ``threads`` / ``streams`` given at load."""
        return self.compiled_for(*self._default)

    def _load_error(self, e: Exception) -> UserError:
        return UserError(
            f"'{self.path}': OpenVINO cannot load model.xml "
            f"({type(e).__name__}: {str(e)[:120]}); export again"
        )

    def compiled_for(self, threads: int | None, streams: int = 1):
        """The model compiled for ``streams`` concurrent inferences of ``threads`` threads each
        (compiled once per pair)."""
        key = (int(threads) if threads else None, max(1, int(streams)))
        with self._lock:
            if key not in self._compiled:
                config = {"INFERENCE_PRECISION_HINT": "f32"}
                if key[1] == 1:
                    config["PERFORMANCE_HINT"] = "LATENCY"  # one stream: all threads on one call
                else:
                    config["NUM_STREAMS"] = key[1]
                if key[0]:
                    config["INFERENCE_NUM_THREADS"] = key[0] * key[1]
                try:
                    self._compiled[key] = self._core.compile_model(self._model, "CPU", config)
                except Exception as e:  # noqa: BLE001 - any failure of the library: one line
                    raise self._load_error(e) from None
            return self._compiled[key]

    def use_threads(self, threads: int | None, streams: int = 1) -> None:
        """The calling thread's next inferences run on ``threads`` threads, with up to
        ``streams`` inferences (from other threads) at once."""
        self._local.compiled = self.compiled_for(threads, streams)

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        compiled = getattr(self._local, "compiled", None) or self.compiled
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        feeds = _feeds(self.input_names, input_ids, attention_mask)
        with _runtime_call(self.kind, self.name):
            request = requests.get(id(compiled))
            if request is None:
                request = requests[id(compiled)] = compiled.create_infer_request()
            out = request.infer(feeds)
        return np.array(out[compiled.outputs[0]], dtype=np.float32)


class RuntimeFailure(UserError):
    """The runtime itself failed to run the export on this machine (no kernel for a node on this
    CPU, out of memory, ...): one line with the runtime's own reason (``reason``)."""

    def __init__(self, kind: str, name: str, reason: str):
        super().__init__(
            f"the {kind} runtime could not run the {name} export on this machine ({reason}); "
            "use --backend torch, or the other export"
        )
        self.kind, self.name, self.reason = kind, name, reason


@contextlib.contextmanager
def _runtime_call(kind: str, name: str):
    """An error raised inside the runtime's inference call -> `RuntimeFailure` (one line)."""
    try:
        yield
    except (UserError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        raise RuntimeFailure(kind, name, _runtime_reason(exc)) from None


@contextlib.contextmanager
def runtime_failures_refused(fmt: str, name: str):
    """A runtime that cannot run the export on this machine (an error of its own, not ours) -> one line
    saying that the export was not written (`export`'s agreement check; a failure to load is already
    one line in the backends, a failure to infer a `RuntimeFailure` there).

    OpenVINO raises RuntimeError, ONNX Runtime its own Exception subclasses, each with a multi-line
    trace of C++ files; the line that says what went wrong is kept.
    """
    try:
        with _runtime_call(fmt, name):  # also catches a backend that does not wrap its own call
            yield
    except RuntimeFailure as exc:
        raise UserError(
            f"the {fmt} runtime could not run the {name} export on this machine ({exc.reason}); "
            "not written — try the other --format, or export without --int8"
        ) from None


def _runtime_reason(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("Exception from ")] or lines
    reason = said[0] if said else type(exc).__name__
    return reason if len(reason) <= 240 else reason[:237] + "..."


RUNTIME_BACKENDS = {"onnx": OnnxBackend, "openvino": OpenVinoBackend}


def export_command(run_dir: str | Path, fmt: str, int8: bool) -> str:
    """The `agnews-lora export` command line that writes this export."""
    return f"agnews-lora export {shlex.quote(str(run_dir))} --format {fmt}" + (
        " --quantize int8" if int8 else ""
    )


def open_export(run_dir: str | Path, name: str, int8: bool = False, threads: int | None = None):
    """The ONNX / OpenVINO backend of a run's export (``RUN_DIR/export/<name>[-int8]``).

    UserErrors, in this order: the runtime's package is missing (naming the extra), the export
    does not exist (naming the `agnews-lora export` command that writes it), it is of an older
    ``merged/`` model. Use `agnews_lora.backends.load_backend` (every backend, torch included).
    """
    if name not in RUNTIME_BACKENDS:
        raise ValueError(f"backend '{name}' is not an exported runtime")
    require(RUNTIME_MODULES[name])
    path = export_dir(run_dir, name, int8)
    if not (path / MODEL_FILES[name]).is_file() or not (path / "export.json").is_file():
        raise UserError(
            f"run '{run_dir}' has no {export_name(name, int8)} export yet; write it with "
            f"`{export_command(run_dir, name, int8)}`"
        )
    check_fresh(Path(run_dir), path, read_export_info(path, name))
    return RUNTIME_BACKENDS[name](path, threads=threads)


def check_fresh(run_dir: Path, path: Path, info: dict) -> None:
    """UserError when ``merged/`` is no longer the model that was exported (retrained run)."""

    merged = run_dir / "merged"
    source = info.get("source") or {}
    if not (merged / "config.json").is_file() or not source.get("sha256"):
        return
    now = source_fingerprint(merged, hash_files=False)
    if (
        now["mtime"] != source.get("mtime")
        and source_fingerprint(merged)["sha256"] != source["sha256"]
    ):
        raise UserError(
            f"'{path}' was exported from an older merged/ model; export again with --overwrite"
        )


def padded_batches(
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
    multiple: int = 8,
    overhead_tokens: int = 64,
):
    """``(rows, input_ids, attention_mask)`` per batch, int64 numpy, longest texts first.

    The Predictor's batching (`plan_batches` + `pad_ids`, CPU pass overhead): rows of similar
    length together, each batch padded to its longest row rounded up to ``multiple``.
    """
    from .batching import pad_ids, plan_batches
    from .data import encode_texts

    encoded, _ = encode_texts(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for rows in plan_batches(encoded.lengths, batch_size, multiple, overhead_tokens, max_length):
        ids, mask = pad_ids([encoded.ids[i] for i in rows], pad_id, multiple, max_length)
        yield rows, ids, mask


def backend_logits(
    backend, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 128
) -> np.ndarray:
    """float32 logits of ``texts`` (in their order) through ``backend.logits``."""
    out = None
    for rows, ids, mask in padded_batches(tokenizer, texts, max_length, batch_size):
        logits = backend.logits(ids, mask)
        if out is None:
            out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def source_fingerprint(merged: Path, hash_files: bool = True) -> dict:
    """sha256 and newest mtime of ``merged/``'s config and weights: which model an export is of."""
    files = sorted([merged / "config.json", *merged.glob("*.safetensors")])
    h = hashlib.sha256()
    for f in files if hash_files else ():
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    mtime = max(f.stat().st_mtime for f in files)
    return {
        "path": "merged",
        "sha256": h.hexdigest() if hash_files else None,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(mtime)),
    }
