"""Running `agnews-lora serve`: load and warm up the model, bind, and run uvicorn.

Slow clients are dropped: uvicorn bounds only the idle time between requests on a kept-alive
connection (``timeout_keep_alive``), not the time a request takes to arrive, so a client that
sends one byte a second would hold its connection (and, for a body, a request task) for ever.
`read_timeout_protocol` adds that bound: from the moment the server waits for a request (a new
connection, or the first byte after a response) the whole request, headers and body, must have
arrived within ``read_timeout_s``, else the connection gets a 408 (when nothing was answered yet)
and is closed.

uvicorn is imported only when serving, so the rest of the CLI does not pay for it.
"""

from __future__ import annotations

import json
import logging
import socket

from ..errors import UserError
from .limits import ServeOptions
from .model import default_threads, default_workers, make_batch_fn, warm_up
from .threads import can_set_threads, make_policy, set_torch_threads, thread_setter

log = logging.getLogger(__name__)


def check_options(options: ServeOptions, port: int, threads: int | None) -> ServeOptions:
    """``options`` if valid, else a UserError naming the flag; ``max_queue_texts`` raised to
    ``max_texts`` (one full request always fits)."""
    for name, low in (
        ("max_batch_size", 1),
        ("max_texts", 1),
        ("max_body_bytes", 64),
        ("max_queue_texts", 1),
    ):
        if getattr(options, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}")
    if not 0 <= options.max_wait_ms <= 1000:
        raise UserError("--max-wait-ms must be between 0 and 1000")
    if not 0 < options.read_timeout_s <= 3600:
        raise UserError("--read-timeout must be more than 0 and at most 3600 seconds")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a TCP port (0-65535)")
    if threads is not None and threads < 0:
        raise UserError("--threads must be at least 1 (or 0 for threads that follow the load)")
    if options.workers < 0:
        raise UserError("--workers must be at least 1 (or 0 for the automatic choice)")
    options.max_queue_texts = max(options.max_queue_texts, options.max_texts)
    return options


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(
            family, kind, proto
        )  # proto=TCP, else asyncio leaves Nagle on (40 ms stalls)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # connections queue from now on, until uvicorn starts accepting them
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def read_timeout_protocol(read_timeout_s: float):
    """uvicorn's h11 protocol with a bound on the time a whole request may take to arrive."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps(
        {
            "error": {
                "code": "request_timeout",
                "message": f"the request did not arrive within {read_timeout_s:g} s",
            }
        }
    ).encode()
    timeout_response = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    class ReadTimeoutH11Protocol(H11Protocol):
        _read_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._arm()  # the first byte of a request on a kept-alive connection starts the clock
            super().data_received(data)
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
                self._disarm()  # the request is in: the app's time is not the client's fault

        def on_response_complete(self) -> None:
            self._disarm()  # waiting for the next request: uvicorn's keep-alive timeout applies
            super().on_response_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(read_timeout_s, self._read_timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(timeout_response)
            log.info("dropped a client that sent no complete request within %g s", read_timeout_s)
            self.transport.close()

    return ReadTimeoutH11Protocol


def serve(
    run_dir: str,
    options: ServeOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    precision: str = "auto",
    quantize: str | None = None,
    threads: int | None = None,
    graceful_timeout: float = 30.0,
    access_log: bool = False,
    verbose: bool = False,
    backend: str = "torch",
) -> int:
    """Load ``run_dir``'s model behind ``backend`` (torch: ``merged/``; onnx / openvino: its
    export), warm it up, listen, and serve until SIGTERM / Ctrl-C."""
    from ..backends import check_backend
    from ..runs import load_finished_run

    options = check_options(options, port, threads)
    check_backend(backend)
    load_finished_run(
        run_dir
    )  # the same one-line error as Predictor.from_run, before torch is imported
    try:
        import uvicorn
    except ImportError:
        raise UserError("serving needs fastapi and uvicorn: pip install fastapi uvicorn") from None
    import torch

    from ..prediction import Predictor
    from .app import create_app

    runtime_threads = None  # an ONNX Runtime / OpenVINO backend: its threads per worker
    if backend != "torch":
        runtime_threads = threads or default_threads(
            torch.get_num_threads(), options.workers or default_workers("cpu")
        )
    predictor = Predictor.from_run(
        run_dir,
        batch_size=options.max_batch_size,
        precision=precision,
        quantize=quantize,
        backend=backend,
        threads=runtime_threads,
    )
    policy = make_policy(
        predictor.device.type,
        torch.get_num_threads(),
        options.workers,
        threads,
        can_set_threads(predictor),
    )
    setter = thread_setter(predictor, policy)
    options.workers = policy.workers
    torch.set_num_threads(policy.total)  # the warm-up; each worker sets its own per batch
    batch_fn = make_batch_fn(predictor)
    # a runtime whose threads follow the load (OpenVINO) compiles and warms the model of a batch
    # alone and the one of busy workers here; torch warms this thread (workers set their own)
    runtime_setter = setter if setter not in (None, set_torch_threads) else None
    sizes = (policy.total, policy.per_worker) if runtime_setter else (policy.total,)
    seconds = 0.0
    for n in dict.fromkeys(sizes):
        if runtime_setter:
            runtime_setter(n)
        seconds += warm_up(batch_fn, predictor, options.max_batch_size)
    app = create_app(predictor, batch_fn, options, run_dir, policy)
    sock = bind(host, port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    batching = (
        f"micro-batching up to {options.max_batch_size} texts, {options.max_wait_ms:g} ms wait"
        if options.batching
        else "no batching (one request per forward)"
    )
    print(
        f"serving {run_dir} on http://{shown}:{port}  ("
        f"{'' if backend == 'torch' else backend + ' '}{predictor.precision}"
        f"{', int8' if quantize else ''} on {predictor.device}, "
        f"{policy.describe()}; {batching}; warm-up {seconds:.2f} s)"
        f"  docs: http://{shown}:{port}/docs",
        flush=True,
    )
    config = uvicorn.Config(
        app,
        log_level="info" if verbose else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout,
        lifespan="on",
        server_header=False,
        http=read_timeout_protocol(options.read_timeout_s),
    )
    server = uvicorn.Server(config)
    server.run(
        sockets=[sock]
    )  # returns after a graceful shutdown; a caught SIGTERM is then re-raised
    return 0
