"""Request validation and limits of `agnews-lora serve` (`serve.app`): `ServeOptions`, the JSON
error body (`ApiError`, `error_response`), `parse_texts` for ``/v1/classify`` bodies and the
request-body size cap (`BodyLimitMiddleware`).

FastAPI is imported only inside `error_response`, so importing `ServeOptions` stays cheap.
"""

import json
from dataclasses import dataclass


@dataclass
class ServeOptions:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_body_bytes: int = 1_048_576
    max_queue_texts: int = 4096
    batching: bool = True
    workers: int = 0  # 0 = auto (serve.model.default_workers): 2 on a CPU with 2+ cores, 1 on a GPU
    read_timeout_s: float = 10.0  # a whole request (headers + body) must arrive within this time


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# requests -------------------------------------------------------------------------------------


def parse_texts(payload, max_texts: int) -> list[str]:
    """The texts of a /v1/classify body, or an ApiError saying exactly what is wrong."""
    hint = 'send {"texts": ["...", ...]} or {"text": "..."}'
    if not isinstance(payload, dict):
        raise ApiError(
            422,
            "invalid_request",
            f"the JSON body must be an object, got {_json_type(payload)}; {hint}",
        )
    unknown = sorted(set(payload) - {"text", "texts"})
    if unknown:
        raise ApiError(
            422, "invalid_request", f"unknown field(s) {', '.join(map(repr, unknown))}; {hint}"
        )
    if ("text" in payload) == ("texts" in payload):
        raise ApiError(422, "invalid_request", f"give exactly one of 'text' and 'texts'; {hint}")
    if "text" in payload:
        texts, names = [payload["text"]], ["'text'"]
    else:
        texts = payload["texts"]
        if not isinstance(texts, list):
            raise ApiError(
                422,
                "invalid_request",
                f"'texts' must be a list of strings, got {_json_type(texts)}",
            )
        if not texts:
            raise ApiError(422, "invalid_request", "'texts' is empty; send at least one text")
        if len(texts) > max_texts:
            raise ApiError(
                413,
                "too_many_texts",
                f"too many texts: {len(texts)} in one request (limit {max_texts}); "
                "split the request",
            )
        names = [f"texts[{i}]" for i in range(len(texts))]
    for name, t in zip(names, texts):
        if not isinstance(t, str):
            raise ApiError(422, "invalid_text", f"{name} must be a string, got {_json_type(t)}")
        if not t.strip():
            raise ApiError(
                422,
                "invalid_text",
                f"{name} is empty; every text needs at least one non-space character",
            )
        try:
            t.encode("utf-8")
        except (
            UnicodeEncodeError
        ):  # JSON can spell a lone UTF-16 surrogate ("\\ud800"); UTF-8 cannot
            raise ApiError(
                422,
                "invalid_text",
                f"{name} is not valid Unicode (it holds a lone UTF-16 surrogate)",
            ) from None
    return texts


def _json_type(v) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


class BodyLimitMiddleware:
    """Reject request bodies over ``max_bytes`` with 413 before the app sees them (by
    Content-Length, or counted while reading a chunked body)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(
            b"content-length"
        )  # the server has checked it is a number
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
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )  # the unread rest of the body makes the connection unusable
        await send({"type": "http.response.body", "body": body})
