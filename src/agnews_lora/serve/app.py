"""The HTTP application of `agnews-lora serve`: endpoints (validation and limits: `serve.limits`).

Endpoints: ``POST /v1/classify``, ``GET /v1/info``, ``GET /health``, ``GET /metrics`` (Prometheus,
`serve.metrics`), ``GET /`` (a demo page, `serve.demo`), plus FastAPI's own ``/openapi.json``
and ``/docs``.  Concurrent requests are gathered by
:class:`agnews_lora.serve.batcher.MicroBatcher` into one batch that runs in a worker thread through
`Predictor.classify` (sorted by length, cut into a few padded forward passes by
`batching.plan_batches`).  Every error is a JSON body ``{"error": {"code": ..., "message": ...}}``
with a 4xx/5xx status.

FastAPI is imported only when serving, so the rest of the CLI does not pay for it.
No ``from __future__ import annotations`` here: FastAPI resolves the handlers' annotations at
runtime.
"""

import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path

from .. import __version__
from .batcher import MicroBatcher, Overloaded, ShuttingDown
from .demo import DEMO_HTML
from .limits import ApiError, BodyLimitMiddleware, ServeOptions, error_response, parse_texts
from .metrics import RequestMetricsMiddleware, ServeMetrics
from .threads import ThreadPolicy, can_set_threads, make_policy, thread_setter

log = logging.getLogger(__name__)


# the app --------------------------------------------------------------------------------------


def _schemas(max_texts: int):
    from pydantic import BaseModel, Field

    class ClassifyRequest(BaseModel):
        """Exactly one of `text` and `texts`."""

        text: str | None = Field(None, min_length=1, description="one text to classify")
        texts: list[str] | None = Field(
            None,
            min_length=1,
            max_length=max_texts,
            description=f"texts to classify (at most {max_texts})",
        )
        model_config = {
            "json_schema_extra": {
                "examples": [
                    {"texts": ["Stocks rally as oil prices fall", "Late goal wins the cup final"]}
                ]
            }
        }

    class Result(BaseModel):
        label: int
        label_name: str
        probabilities: dict[str, float]
        truncated: bool = Field(
            description="the text was longer than the model's max length and was cut"
        )

    class ClassifyResponse(BaseModel):
        results: list[Result] = Field(description="one result per input text, in input order")

    class ErrorBody(BaseModel):
        code: str = Field(
            description="machine-readable, e.g. malformed_json, too_many_texts, overloaded"
        )
        message: str = Field(description="what is wrong, for people")

    class ErrorResponse(BaseModel):
        error: ErrorBody

    return ClassifyRequest, ClassifyResponse, ErrorResponse


def public_model_name(name_or_path: str | None) -> str | None:
    """A model's name without where it lies on this machine: a Hub id or ``package:...`` as given,
    a local directory by its last component."""
    if not name_or_path:
        return name_or_path
    local = (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or os.path.exists(name_or_path)
    )
    return (
        Path(name_or_path.rstrip("/\\")).name
        if local and not name_or_path.startswith("package:")
        else name_or_path
    )


def create_app(
    predictor,
    batch_fn,
    options: ServeOptions,
    run_dir: str | Path = "",
    threads: ThreadPolicy | None = None,
):
    """The FastAPI application around a loaded (and warmed-up) ``Predictor``.

    ``threads``: each batch's thread count (default `serve.threads.make_policy`: threads follow
    the load, all of torch's threads for a batch that runs alone)."""
    import torch
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if threads is None:
        threads = make_policy(
            predictor.device.type,
            torch.get_num_threads(),
            options.workers,
            None,
            can_set_threads(predictor),
        )
    setter = thread_setter(predictor, threads)
    options = replace(options, workers=threads.workers)  # 0 = auto
    batcher = MicroBatcher(
        batch_fn,
        options.max_batch_size,
        options.max_wait_ms,
        options.max_queue_texts,
        options.batching,
        options.workers,
        threads=threads,
        set_threads=setter,
    )
    summary = getattr(predictor, "summary", {}) or {}
    metrics = ServeMetrics(
        batcher,
        {
            "run": Path(run_dir).name,
            "base_model": str(public_model_name(summary.get("base_model"))),
            "backend": getattr(predictor, "backend_kind", "torch"),
            "precision": predictor.precision,
        },
    )
    batcher.on_batch = metrics.on_batch
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
    app = FastAPI(
        title="agnews-lora classifier",
        version=__version__,
        lifespan=lifespan,
        description="Text classification with the merged LoRA model of run "
        f"`{Path(run_dir).name}`.",
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=options.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: sees every status

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # still logged with its traceback by the server
        return error_response(500, "internal_error", f"unexpected error: {type(exc).__name__}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    errors = {s: {"model": ErrorResponse} for s in (400, 413, 415, 422, 500, 503)}

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=errors,
        summary="Classify texts",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
            }
        },
    )
    async def classify(request: Request):
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            got = f"'{media}'" if media else "no Content-Type"
            raise ApiError(
                415, "unsupported_media_type", f"send the body as application/json (got {got})"
            )
        body = await request.body()
        if not body.strip():
            raise ApiError(
                400, "malformed_json", "the request body is empty; expected a JSON object"
            )
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(
                400, "malformed_json", f"the request body is not valid JSON: {e}"
            ) from None
        except RecursionError:
            raise ApiError(
                400,
                "malformed_json",
                "the request body is nested too deeply; expected an object of texts",
            ) from None
        texts = parse_texts(payload, options.max_texts)
        try:
            results = await batcher.submit(texts)
        except Overloaded as e:
            raise ApiError(
                503, "overloaded", f"server overloaded: {e}; retry later", {"Retry-After": "1"}
            ) from None
        except ShuttingDown as e:
            raise ApiError(503, "shutting_down", str(e)) from None
        except Exception as e:  # noqa: BLE001 - this request's batch failed; the server goes on
            raise ApiError(
                500, "inference_failed", f"inference failed: {type(e).__name__}: {e}"
            ) from None
        return JSONResponse({"results": results})

    @app.get(
        "/health",
        summary="Readiness: 200 once the model is loaded and warmed up",
        responses={503: {"model": ErrorResponse}},
    )
    async def health():
        if state["ready"] and batcher.running:
            return {"status": "ok"}
        return error_response(503, "not_ready", "starting up or shutting down")

    params, best = summary.get("params", {}), summary.get("best", {})
    info = {
        "run": Path(run_dir).name,
        "base_model": public_model_name(summary.get("base_model")),
        "labels": list(predictor.label_names),
        "max_length": predictor.max_length,
        "parameters": {k: params.get(k) for k in ("trainable", "total", "lora", "head")},
        "validation_accuracy": best.get("val_accuracy"),
        "backend": getattr(predictor, "backend_kind", "torch"),
        "precision": predictor.precision,
        "quantized": bool(getattr(predictor, "quantized", False)),
        "device": str(predictor.device),
        "training_precision": summary.get("precision"),
        "serving": {**asdict(options), "threads": threads.to_dict()},
    }

    @app.get(
        "/v1/info", summary="The model behind the endpoint, the serving limits and live counters"
    )
    async def model_info():
        return {**info, "stats": batcher.stats_dict()}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def demo_page():
        return HTMLResponse(DEMO_HTML)

    return app
