"""`agnews-lora serve RUN_DIR`: an HTTP inference service (FastAPI + uvicorn) with micro-batching.

Endpoints: ``POST /v1/classify``, ``GET /v1/info``, ``GET /health``, plus FastAPI's own
``/openapi.json`` and ``/docs``.  The model is loaded and warmed up before the port opens;
concurrent requests are gathered by :class:`agnews_lora.batcher.MicroBatcher` into one batch that
runs in a worker thread, sorted by length and cut into a few padded forward passes
(:func:`agnews_lora.batcher.plan_forwards`).  Every error is a JSON body
``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status.

FastAPI and uvicorn are imported only when serving, so the rest of the CLI does not pay for them.
No ``from __future__ import annotations`` here: FastAPI resolves the handlers' annotations at runtime.
"""

import json
import logging
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from . import __version__
from .batcher import MicroBatcher, Overloaded, ShuttingDown
from .errors import UserError
from .serve_model import TEST_HOOKS_ENV, default_threads, default_workers, make_batch_fn, warm_up

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_body_bytes: int = 1_048_576
    max_queue_texts: int = 4096
    batching: bool = True
    workers: int = 0  # 0 = auto (serve_model.default_workers): 2 on a CPU with 2+ cores, 1 on a GPU


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


# requests -------------------------------------------------------------------------------------


def parse_texts(payload, max_texts: int) -> list[str]:
    """The texts of a /v1/classify body, or an ApiError saying exactly what is wrong."""
    hint = "send {\"texts\": [\"...\", ...]} or {\"text\": \"...\"}"
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", f"the JSON body must be an object, got {_json_type(payload)}; {hint}")
    unknown = sorted(set(payload) - {"text", "texts"})
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field(s) {', '.join(map(repr, unknown))}; {hint}")
    if ("text" in payload) == ("texts" in payload):
        raise ApiError(422, "invalid_request", f"give exactly one of 'text' and 'texts'; {hint}")
    if "text" in payload:
        texts, names = [payload["text"]], ["'text'"]
    else:
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise ApiError(422, "invalid_request", f"'texts' must be a list of strings, got {_json_type(texts)}")
        if not texts:
            raise ApiError(422, "invalid_request", "'texts' is empty; send at least one text")
        if len(texts) > max_texts:
            raise ApiError(413, "too_many_texts",
                           f"too many texts: {len(texts)} in one request (limit {max_texts}); split the request")
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, t in zip(names, texts):
        if not isinstance(t, str):
            raise ApiError(422, "invalid_text", f"{name} must be a string, got {_json_type(t)}")
        if not t.strip():
            raise ApiError(422, "invalid_text", f"{name} is empty; every text needs at least one non-space character")
    return texts


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


class BodyLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with 413 before the app sees them (Content-Length or chunked)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")  # the server has checked it is a number
        if declared is not None and int(declared) > self.max_bytes:
            return await self._reject(send, declared.decode())
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client disconnected
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send, f"more than {self.max_bytes}")
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send, size: str):
        message = f"request body is too large ({size} bytes; limit {self.max_bytes} bytes)"
        body = json.dumps({"error": {"code": "body_too_large", "message": message}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})  # the unread rest of the body makes the connection unusable
        await send({"type": "http.response.body", "body": body})


# the app --------------------------------------------------------------------------------------


def _schemas(max_texts: int):
    from pydantic import BaseModel, Field

    class ClassifyRequest(BaseModel):
        """Exactly one of `text` and `texts`."""
        text: Optional[str] = Field(None, min_length=1, description="one text to classify")
        texts: Optional[list[str]] = Field(None, min_length=1, max_length=max_texts,
                                           description=f"texts to classify (at most {max_texts})")
        model_config = {"json_schema_extra": {"examples": [{"texts": ["Stocks rally as oil prices fall",
                                                                      "Late goal wins the cup final"]}]}}

    class Result(BaseModel):
        label: int
        label_name: str
        probabilities: dict[str, float]
        truncated: bool = Field(description="the text was longer than the model's max length and was cut")

    class ClassifyResponse(BaseModel):
        results: list[Result] = Field(description="one result per input text, in input order")

    class ErrorBody(BaseModel):
        code: str = Field(description="machine-readable, e.g. malformed_json, too_many_texts, overloaded")
        message: str = Field(description="what is wrong, for people")

    class ErrorResponse(BaseModel):
        error: ErrorBody

    return ClassifyRequest, ClassifyResponse, ErrorResponse


def create_app(predictor, batch_fn, options: ServeOptions, run_dir: str | Path = ""):
    """The FastAPI application around a loaded (and warmed-up) ``Predictor``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    options = replace(options, workers=options.workers or default_workers(predictor.device.type))  # 0 = auto
    batcher = MicroBatcher(batch_fn, options.max_batch_size, options.max_wait_ms, options.max_queue_texts,
                           options.batching, options.workers)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()
        s = batcher.stats
        log.info("stopped: %d requests, %d texts in %d batches", s.requests, s.texts, s.batches)

    ClassifyRequest, ClassifyResponse, ErrorResponse = _schemas(options.max_texts)
    app = FastAPI(title="agnews-lora classifier", version=__version__, lifespan=lifespan,
                  description=f"Text classification with the merged LoRA model of run `{Path(run_dir).name}`.")
    app.add_middleware(BodyLimitMiddleware, max_bytes=options.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return _error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # still logged with its traceback by the server
        return _error_response(500, "internal_error", f"unexpected error: {type(exc).__name__}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    errors = {s: {"model": ErrorResponse} for s in (400, 413, 415, 422, 500, 503)}

    @app.post("/v1/classify", response_model=ClassifyResponse, responses=errors, summary="Classify texts",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ClassifyRequest.model_json_schema()}}}})
    async def classify(request: Request):
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
            got = f"'{media}'" if media else "no Content-Type"
            raise ApiError(415, "unsupported_media_type", f"send the body as application/json (got {got})")
        body = await request.body()
        if not body.strip():
            raise ApiError(400, "malformed_json", "the request body is empty; expected a JSON object")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {e}") from None
        texts = parse_texts(payload, options.max_texts)
        try:
            results = await batcher.submit(texts)
        except Overloaded as e:
            raise ApiError(503, "overloaded", f"server overloaded: {e}; retry later", {"Retry-After": "1"}) from None
        except ShuttingDown as e:
            raise ApiError(503, "shutting_down", str(e)) from None
        except Exception as e:  # noqa: BLE001 - this request's batch failed; the server keeps serving
            raise ApiError(500, "inference_failed", f"inference failed: {type(e).__name__}: {e}") from None
        return JSONResponse({"results": results})

    @app.get("/health", summary="Readiness: 200 once the model is loaded and warmed up",
             responses={503: {"model": ErrorResponse}})
    async def health():
        if state["ready"] and batcher.running:
            return {"status": "ok"}
        return _error_response(503, "not_ready", "starting up or shutting down")

    summary = getattr(predictor, "summary", {}) or {}
    params, best = summary.get("params", {}), summary.get("best", {})
    info = {
        "run": Path(run_dir).name, "base_model": summary.get("base_model"),
        "labels": list(predictor.label_names), "max_length": predictor.max_length,
        "parameters": {k: params.get(k) for k in ("trainable", "total", "lora", "head")},
        "validation_accuracy": best.get("val_accuracy"),
        "precision": predictor.precision, "quantized": bool(getattr(predictor, "quantized", False)),
        "device": str(predictor.device), "training_precision": summary.get("precision"),
        "serving": asdict(options),
    }

    @app.get("/v1/info", summary="The model behind the endpoint, the serving limits and live counters")
    async def model_info():
        return {**info, "stats": batcher.stats_dict()}

    return app


# CLI ------------------------------------------------------------------------------------------


def register_cli(sub) -> None:
    s = sub.add_parser("serve", help="serve a finished run over HTTP (POST /v1/classify) with micro-batching")
    s.add_argument("run_dir", help="a finished run directory (runs/<name>, with merged/ and summary.json)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port; default 8000)")
    d = ServeOptions()
    s.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="texts per micro-batch (run as one or a few length-sorted forward passes)")
    s.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long the oldest queued request waits for others to join its batch")
    s.add_argument("--max-texts", type=int, default=d.max_texts, help="texts per request")
    s.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body size cap")
    s.add_argument("--max-queue-texts", type=int, default=d.max_queue_texts,
                   help="queued texts before new requests get 503 (back-pressure)")
    s.add_argument("--no-batching", action="store_true", help="one request per forward pass (baseline)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="inference precision (auto: bf16 where the CPU/GPU runs it fast)")
    s.add_argument("--quantize", choices=["int8"], help="serve the dynamically int8-quantised model (CPU)")
    s.add_argument("--workers", type=int, default=d.workers,
                   help="micro-batches that may run at the same time, each in its own thread "
                        "(default 0 = auto: 2 on a CPU with 2+ cores, 1 on a GPU)")
    s.add_argument("--threads", type=int,
                   help="torch intra-op threads per worker (default: torch's choice minus one, leaving a core "
                        "for HTTP, shared out among the workers)")
    s.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds to let in-flight requests finish after SIGTERM / Ctrl-C")
    s.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    s.set_defaults(func=cmd_serve)


def _check_options(args) -> ServeOptions:
    for name, low in (("max_batch_size", 1), ("max_texts", 1), ("max_body_bytes", 64), ("max_queue_texts", 1)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}")
    if not 0 <= args.max_wait_ms <= 1000:
        raise UserError("--max-wait-ms must be between 0 and 1000")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.workers < 0:
        raise UserError("--workers must be at least 1 (or 0 for the automatic choice)")
    return ServeOptions(args.max_batch_size, args.max_wait_ms, args.max_texts, args.max_body_bytes,
                        max(args.max_queue_texts, args.max_texts), not args.no_batching, args.workers)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)  # proto=TCP, else asyncio leaves Nagle on (40 ms stalls)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # connections queue from now on, until uvicorn starts accepting them
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def cmd_serve(args) -> int:
    from .runs import load_finished_run

    options = _check_options(args)
    load_finished_run(args.run_dir)  # the same one-line error as Predictor.from_run, before torch is imported
    try:
        import uvicorn
    except ImportError:
        raise UserError("serving needs fastapi and uvicorn: pip install fastapi uvicorn") from None
    import torch

    from .prediction import Predictor

    predictor = Predictor.from_run(args.run_dir, batch_size=options.max_batch_size, precision=args.precision,
                                   quantize=args.quantize)
    options.workers = options.workers or default_workers(predictor.device.type)
    torch.set_num_threads(args.threads or default_threads(torch.get_num_threads(), options.workers))
    batch_fn = make_batch_fn(predictor)
    if os.environ.get(TEST_HOOKS_ENV) == "1":
        log.warning("test hooks are enabled (%s=1): do not use this in production", TEST_HOOKS_ENV)
    seconds = warm_up(batch_fn, predictor, options.max_batch_size)
    app = create_app(predictor, batch_fn, options, args.run_dir)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    threads, workers = torch.get_num_threads(), options.workers
    shown = f"[{host}]" if ":" in host else host
    batching = (f"micro-batching up to {options.max_batch_size} texts, {options.max_wait_ms:g} ms wait"
                if options.batching else "no batching (one request per forward)")
    print(f"serving {args.run_dir} on http://{shown}:{port}  ({predictor.precision}"
          f"{', int8' if args.quantize else ''} on {predictor.device}, {workers} worker{'s' * (workers > 1)} x {threads} thread{'s' * (threads > 1)}; {batching};"
          f" warm-up {seconds:.2f} s)  docs: http://{shown}:{port}/docs", flush=True)
    config = uvicorn.Config(app, log_level="info" if args.verbose else "warning", access_log=args.access_log,
                            timeout_graceful_shutdown=args.graceful_timeout, lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])  # returns after a graceful shutdown; a caught SIGTERM / SIGINT is then re-raised
    return 0
