"""Prometheus metrics of `agnews-lora serve` (``GET /metrics``), on a per-app registry.

Requests by endpoint, method and status and their latencies (an ASGI middleware around the whole
app, so a 413 from the body limit counts too); queue depth and texts in flight (read when
scraped); batch sizes in texts and requests, batch durations and classified texts (from the
micro-batcher's ``on_batch`` hook): ``rate(agnews_classified_texts_total[1m])`` is texts/s.
"""

from __future__ import annotations

import time

# request paths reported by name; anything else is "other" (no unbounded label values)
ENDPOINTS = ("/", "/v1/classify", "/v1/info", "/health", "/metrics", "/docs", "/openapi.json")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    """The metrics of one app, registered in their own ``CollectorRegistry``."""

    def __init__(self, batcher, model_info: dict[str, str]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "agnews_http_requests",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "agnews_http_request_duration_seconds",
            "Time to answer a request, by endpoint and status",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.texts = Counter(
            "agnews_classified_texts", "Texts classified (rate() = texts/s)", registry=r
        )
        self.batch_texts = Histogram(
            "agnews_batch_size_texts", "Texts per model batch", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "agnews_batch_size_requests",
            "Requests per model batch",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "agnews_batch_duration_seconds",
            "Time a model batch took in its worker thread",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failed_batches = Counter(
            "agnews_failed_batches", "Model batches that raised", registry=r
        )
        queue = Gauge("agnews_queue_texts", "Texts waiting for a batch", registry=r)
        queue.set_function(lambda: batcher.queued_texts)
        running = Gauge("agnews_running_texts", "Texts in batches running now", registry=r)
        running.set_function(lambda: batcher.running_texts)
        Info("agnews_model", "The model being served", registry=r).info(model_info)

    def on_batch(self, texts: int, requests: int, seconds: float, ok: bool) -> None:
        """The micro-batcher's hook: one model batch finished (``ok``) or raised."""
        self.batch_seconds.observe(seconds)
        if not ok:
            self.failed_batches.inc()
            return
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)
        self.texts.inc(texts)

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, str(status)).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetricsMiddleware:
    """Count every HTTP request and time it (pure ASGI; outermost, so it sees every status)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # an exception that escapes the app is answered with 500
        t0 = time.perf_counter()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(
                scope.get("path", ""), scope.get("method", ""), status, time.perf_counter() - t0
            )
