"""`agnews-lora serve`: the real server in a subprocess on a free loopback port, spoken to over HTTP.

The server runs through `helpers.serve_with_faults`: a text "__sleep:<ms>__" makes its batch sleep
first (to hold the worker deterministically) and "__raise__" makes its batch raise.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import ServerProcess

from agnews_lora.tiny import synthetic_rows

MAX_TEXTS, MAX_BODY, MAX_BATCH, MAX_QUEUE = 8, 4096, 16, 64
READ_TIMEOUT = 2  # seconds the main server gives a client to send a whole request
# one pooled client for every request (thread-safe; a new httpx.Client per call costs ~40 ms of TLS set-up)
HTTP = httpx.Client(
    timeout=30,
    verify=False,
    limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
)


@pytest.fixture(scope="module")
def servers(trained_run, tmp_path_factory):
    """The servers of this module, started at the same time: the main one (one worker, so that a test can
    hold it), an unbatched one to stop, and one with two workers."""
    tmp = tmp_path_factory.mktemp("serve")
    started = []
    try:
        started.append(
            ServerProcess(
                trained_run,
                tmp,
                "--max-texts",
                str(MAX_TEXTS),
                "--max-body-bytes",
                str(MAX_BODY),
                "--max-batch-size",
                str(MAX_BATCH),
                "--max-wait-ms",
                "20",
                "--max-queue-texts",
                str(MAX_QUEUE),
                "--workers",
                "1",
                "--read-timeout",
                str(READ_TIMEOUT),
            )
        )
        started.append(ServerProcess(trained_run, tmp, "--no-batching", "--workers", "1"))
        started.append(
            ServerProcess(
                trained_run,
                tmp,
                "--workers",
                "2",
                "--max-batch-size",
                str(MAX_BATCH),
                "--max-wait-ms",
                "20",
            )
        )
        yield {
            "main": started[0].ready(),
            "unbatched": started[1].ready(),
            "two_workers": started[2].ready(),
        }
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["main"].url


@pytest.fixture(scope="module")
def predictor(trained_run):
    from agnews_lora.prediction import Predictor

    return Predictor.from_run(trained_run, precision="fp32")


@pytest.fixture(scope="module")
def texts():
    return [t for t, _ in synthetic_rows(48, seed=11)]


def classify(url, body, **kw):
    return HTTP.post(f"{url}/v1/classify", json=body, **kw)


def stats(url) -> dict:
    return HTTP.get(f"{url}/v1/info").json()["stats"]


def hold_worker(url, ms: int, pool: ThreadPoolExecutor):
    """Occupy the model thread for `ms` ms (test hook); returns the future of that request once it runs."""
    fut = pool.submit(classify, url, {"text": f"__sleep:{ms}__"})
    deadline = time.monotonic() + 10
    while stats(url)["running_texts"] == 0:  # wait until the worker has it
        assert time.monotonic() < deadline and not fut.done()
        time.sleep(0.01)
    return fut


def assert_matches_predictor(results, batch, predictor):
    for text, r in zip(batch, results, strict=True):
        one = predictor.predict_proba([text])[
            0
        ]  # the text alone: no batch neighbours, no shared padding
        assert r["label"] == predictor.predict([text])[0]
        assert r["label_name"] == predictor.label_names[r["label"]]
        np.testing.assert_allclose(
            [r["probabilities"][n] for n in predictor.label_names], one, atol=1e-4
        )


# ---------------------------------------------------------------------------------------------
# happy path


def test_health_info_and_openapi(server, trained_run, predictor):
    assert HTTP.get(f"{server}/health").json() == {"status": "ok"}
    r = HTTP.get(f"{server}/v1/info")
    info = r.json()
    s = predictor.summary
    assert info["base_model"] == Path(s["base_model"]).name == "model"  # the tiny model's folder
    assert info["run"] == "tiny-run"
    assert (
        str(Path(s["base_model"]).parent) not in r.text and str(trained_run) not in r.text
    )  # no paths
    assert info["serving"]["read_timeout_s"] == READ_TIMEOUT
    assert info["labels"] == predictor.label_names
    assert info["parameters"]["trainable"] == s["params"]["trainable"] > 0
    assert info["parameters"]["total"] == s["params"]["total"] > info["parameters"]["trainable"]
    assert info["validation_accuracy"] == pytest.approx(s["best"]["val_accuracy"])
    assert info["precision"] == "fp32" and info["max_length"] == predictor.max_length
    assert info["serving"]["max_texts"] == MAX_TEXTS and info["serving"]["batching"] is True
    spec = HTTP.get(f"{server}/openapi.json").json()
    assert {"/v1/classify", "/v1/info", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body["properties"]["texts"]["anyOf"][0]["maxItems"] == MAX_TEXTS


def test_classify_texts_and_single_text(server, predictor, texts):
    r = classify(server, {"texts": texts[:5]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    results = r.json()["results"]
    assert len(results) == 5
    assert_matches_predictor(results, texts[:5], predictor)
    for res in results:
        assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert res["truncated"] is False
    single = classify(server, {"text": texts[7]}).json()["results"]
    assert len(single) == 1
    assert_matches_predictor(single, [texts[7]], predictor)


def test_long_text_is_truncated_and_flagged(server, predictor, texts):
    long_text = " ".join([texts[0]] * 30)  # far beyond max_length tokens, but under the body cap
    assert len(long_text.encode()) < MAX_BODY - 100
    results = classify(server, {"texts": [long_text, texts[1]]}).json()["results"]
    assert [r["truncated"] for r in results] == [True, False]
    assert results[0]["label"] == predictor.predict([long_text])[0]


def test_keep_alive_responses_are_not_delayed(server):
    with httpx.Client(base_url=server, timeout=10, verify=False) as client:
        client.get("/health")
        times = []
        for _ in range(9):
            t0 = time.perf_counter()
            assert client.get("/health").status_code == 200
            times.append(time.perf_counter() - t0)
    assert (
        sorted(times)[4] < 0.03
    )  # Nagle + delayed ACKs would add ~40 ms to each reuse of a connection


# ---------------------------------------------------------------------------------------------
# bad input: 4xx with a JSON error that says what is wrong; the server keeps serving


def _raw(url, content, content_type="application/json"):
    headers = {"content-type": content_type} if content_type else {}
    return HTTP.post(f"{url}/v1/classify", content=content, headers=headers)


BAD_INPUTS = {
    "malformed JSON": (
        lambda u: _raw(u, b'{"texts": ["a",'),
        400,
        "malformed_json",
        "not valid JSON",
    ),
    "invalid UTF-8": (
        lambda u: _raw(u, b'{"text": "\xff\xfe"}'),
        400,
        "malformed_json",
        "not valid JSON",
    ),
    "empty body": (lambda u: _raw(u, b""), 400, "malformed_json", "empty"),
    "text/plain": (
        lambda u: _raw(u, b'{"text": "a"}', "text/plain"),
        415,
        "unsupported_media_type",
        "text/plain",
    ),
    "no content type": (
        lambda u: _raw(u, b'{"text": "a"}', None),
        415,
        "unsupported_media_type",
        "application/json",
    ),
    "form body": (
        lambda u: HTTP.post(f"{u}/v1/classify", data={"text": "a"}),
        415,
        "unsupported_media_type",
        "x-www-form-urlencoded",
    ),
    "empty text": (lambda u: classify(u, {"text": ""}), 422, "invalid_text", "'text' is empty"),
    "blank text in list": (
        lambda u: classify(u, {"texts": ["ok", "   "]}),
        422,
        "invalid_text",
        "texts[1] is empty",
    ),
    "empty list": (
        lambda u: classify(u, {"texts": []}),
        422,
        "invalid_request",
        "'texts' is empty",
    ),
    "number text": (
        lambda u: classify(u, {"text": 3}),
        422,
        "invalid_text",
        "'text' must be a string, got a number",
    ),
    "null in list": (
        lambda u: classify(u, {"texts": ["ok", None]}),
        422,
        "invalid_text",
        "texts[1] must be a string, got null",
    ),
    "object in list": (
        lambda u: classify(u, {"texts": [{"t": "x"}]}),
        422,
        "invalid_text",
        "texts[0] must be a string",
    ),
    "texts not a list": (
        lambda u: classify(u, {"texts": "abc"}),
        422,
        "invalid_request",
        "must be a list",
    ),
    "body not an object": (
        lambda u: classify(u, ["a", "b"]),
        422,
        "invalid_request",
        "must be an object",
    ),
    "both text and texts": (
        lambda u: classify(u, {"text": "a", "texts": ["b"]}),
        422,
        "invalid_request",
        "exactly one",
    ),
    "neither": (lambda u: classify(u, {}), 422, "invalid_request", "exactly one"),
    "unknown field": (lambda u: classify(u, {"txt": "a"}), 422, "invalid_request", "'txt'"),
    "too many texts": (
        lambda u: classify(u, {"texts": ["a"] * (MAX_TEXTS + 1)}),
        413,
        "too_many_texts",
        f"limit {MAX_TEXTS}",
    ),
    "body too large": (
        lambda u: classify(u, {"text": "x" * (MAX_BODY + 10)}),
        413,
        "body_too_large",
        f"limit {MAX_BODY} bytes",
    ),
    "chunked body too large": (
        lambda u: _raw(u, iter([b'{"text": "' + b"x" * 3000, b"y" * 3000 + b'"}'])),
        413,
        "body_too_large",
        f"limit {MAX_BODY} bytes",
    ),
    "deeply nested JSON": (
        lambda u: _raw(u, b'{"texts": ' + b"[" * 2000 + b"]" * 2000 + b"}"),
        400,
        "malformed_json",
        "nested too deeply",
    ),
    "lone surrogate": (
        lambda u: _raw(u, b'{"text": "abc \\ud800 def"}'),
        422,
        "invalid_text",
        "'text' is not valid Unicode (it holds a lone UTF-16 surrogate)",
    ),
    "lone surrogate in list": (
        lambda u: _raw(u, b'{"texts": ["ok", "\\udfff"]}'),
        422,
        "invalid_text",
        "texts[1] is not valid Unicode",
    ),
    "wrong method": (
        lambda u: HTTP.get(f"{u}/v1/classify"),
        405,
        "method_not_allowed",
        "Method Not Allowed",
    ),
    "unknown path": (
        lambda u: HTTP.post(f"{u}/v1/clasify", json={"text": "a"}),
        404,
        "not_found",
        "Not Found",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_json_4xx(server, case):
    send, status, code, message = BAD_INPUTS[case]
    r = send(server)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code
    assert message in err["message"]
    assert classify(server, {"text": "still serving"}).status_code == 200


def test_exact_limits_are_accepted(server):
    assert len(classify(server, {"texts": ["a"] * MAX_TEXTS}).json()["results"]) == MAX_TEXTS
    body = b'{"text": "' + b"w " * ((MAX_BODY - 12) // 2) + b'"}'
    assert len(body) <= MAX_BODY
    assert _raw(server, body).status_code == 200


# ---------------------------------------------------------------------------------------------
# slow clients: a whole request must arrive within --read-timeout, else 408 and the socket is closed
# (a bound on the time, not the rate: one byte a second would otherwise hold a connection for ever)


def _trickle(
    port: int, head: bytes, limit: float = 3 * READ_TIMEOUT + 5
) -> tuple[float | None, bytes]:
    """Send ``head``, then one byte every 0.2 s; (seconds until the server closed, what it sent),
    or (None, ...) if it still held the connection after ``limit`` seconds."""
    t0, got = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        while time.monotonic() - t0 < limit:
            if select.select([sock], [], [], 0.2)[0]:
                try:
                    chunk = sock.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    return time.monotonic() - t0, got
                got += chunk
                continue
            try:
                sock.sendall(b"x")
            except OSError:  # closed under us
                return time.monotonic() - t0, got
    return None, got


SLOW_CLIENTS = {
    "slow headers": b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    "slow body": b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 1000\r\n\r\n{"text": "',
    "silent connection": b"",
}


@pytest.mark.parametrize("case", list(SLOW_CLIENTS))
def test_slow_client_is_dropped_after_the_read_timeout(servers, case):
    main = servers["main"]
    head = SLOW_CLIENTS[case]
    if case == "silent connection":  # connects, then sends nothing at all
        t0 = time.monotonic()
        with socket.create_connection(
            ("127.0.0.1", main.port), timeout=3 * READ_TIMEOUT + 5
        ) as sock:
            got = sock.recv(4096)
            while got and not got.endswith(b"}"):
                got += sock.recv(4096)
            seconds = time.monotonic() - t0
    else:
        seconds, got = _trickle(main.port, head)
    assert seconds is not None, "the server held a slow client's connection open"
    assert READ_TIMEOUT - 0.5 < seconds < READ_TIMEOUT + 3
    assert got.startswith(b"HTTP/1.1 408 ") and b'"code": "request_timeout"' in got
    assert classify(main.url, {"text": "still serving"}).status_code == 200


def test_a_slow_app_is_not_a_slow_client(servers):
    """The read timeout covers only the arrival of a request: a slower batch still answers."""
    r = classify(servers["main"].url, {"text": f"__sleep:{(READ_TIMEOUT + 1) * 1000}__"})
    assert r.status_code == 200


# ---------------------------------------------------------------------------------------------
# micro-batching, isolation of failures, back-pressure, a free event loop


def test_concurrent_clients_get_exactly_their_own_answers(server, predictor, texts):
    n_clients = 32
    batches = [
        texts[i : i + 1 + i % 2] for i in range(n_clients)
    ]  # 1 or 2 texts per request, all different
    barrier = threading.Barrier(n_clients, timeout=30)

    def client(batch):
        barrier.wait()
        body = {"text": batch[0]} if len(batch) == 1 else {"texts": batch}
        return classify(server, body)

    before = stats(server)
    with ThreadPoolExecutor(n_clients + 1) as pool:
        sleeper = hold_worker(server, 600, pool)  # they all queue up behind this batch
        responses = list(pool.map(client, batches))
        assert sleeper.result().status_code == 200
    for batch, r in zip(batches, responses):
        assert r.status_code == 200, r.text
        assert_matches_predictor(r.json()["results"], batch, predictor)
    after = stats(server)
    n_requests = after["requests"] - before["requests"] - 1
    assert n_requests == n_clients
    assert (
        after["batches"] - before["batches"] - 1 < n_clients // 2
    )  # gathered, not one forward each
    assert after["largest_batch_requests"] > 1
    assert after["largest_batch_texts"] <= MAX_BATCH


def test_failing_batch_fails_only_the_request_that_breaks_it(server, predictor, texts):
    with ThreadPoolExecutor(12) as pool:
        sleeper = hold_worker(
            server, 400, pool
        )  # the bad and the good requests gather into one batch
        bad = pool.submit(classify, server, {"texts": ["fine", "__raise__"]})
        good = [pool.submit(classify, server, {"text": t}) for t in texts[:10]]
        r_bad, r_good = bad.result(), [f.result() for f in good]
        assert sleeper.result().status_code == 200
    assert r_bad.status_code == 500
    assert r_bad.json()["error"] == {
        "code": "inference_failed",
        "message": "inference failed: RuntimeError: injected test fault",
    }
    for t, r in zip(texts[:10], r_good):
        assert r.status_code == 200
        assert_matches_predictor(r.json()["results"], [t], predictor)
    assert HTTP.get(f"{server}/health").status_code == 200
    assert classify(server, {"text": texts[3]}).status_code == 200


def test_full_queue_answers_503(server):
    with ThreadPoolExecutor(MAX_QUEUE // MAX_TEXTS + 1) as pool:
        sleeper = hold_worker(server, 1500, pool)
        queued = [
            pool.submit(classify, server, {"texts": [f"text {i}"] * MAX_TEXTS})
            for i in range(MAX_QUEUE // MAX_TEXTS)
        ]
        deadline = time.monotonic() + 10
        while stats(server)["queued_texts"] < MAX_QUEUE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = classify(server, {"text": "one too many"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert all(f.result().status_code == 200 for f in queued)
        assert sleeper.result().status_code == 200


def test_event_loop_is_not_blocked_by_the_model(server):
    with ThreadPoolExecutor(1) as pool:
        sleeper = hold_worker(server, 1500, pool)
        t0 = time.perf_counter()
        assert HTTP.get(f"{server}/health", timeout=5).status_code == 200
        assert HTTP.get(f"{server}/v1/info", timeout=5).status_code == 200
        assert time.perf_counter() - t0 < 0.75
        assert not sleeper.done()
        assert sleeper.result().status_code == 200


def test_two_workers_run_two_batches_at_once_and_answer_each_client(servers, predictor, texts):
    url = servers["two_workers"].url
    info = HTTP.get(f"{url}/v1/info").json()
    assert info["serving"]["workers"] == 2
    with ThreadPoolExecutor(34) as pool:
        first = hold_worker(url, 800, pool)
        second = pool.submit(classify, url, {"text": "__sleep:800__"})
        deadline = time.monotonic() + 10
        while stats(url)["running_texts"] < 2:  # both workers busy at the same time
            assert time.monotonic() < deadline and not second.done()
            time.sleep(0.01)
        batches = [
            texts[i : i + 1 + i % 3] for i in range(32)
        ]  # queue behind them, then share the two workers
        responses = list(pool.map(lambda b: classify(url, {"texts": b}), batches))
        assert first.result().status_code == 200 and second.result().status_code == 200
    for batch, r in zip(batches, responses):
        assert r.status_code == 200, r.text
        assert_matches_predictor(r.json()["results"], batch, predictor)
    s = stats(url)
    assert (
        s["largest_batch_texts"] <= MAX_BATCH
        and s["failed_requests"] == 0
        and s["running_texts"] == 0
    )


# ---------------------------------------------------------------------------------------------
# process level: bad run dir, no batching, graceful shutdown


def test_bad_run_dir_or_option_is_one_line_exit_2_before_binding(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cases = {  # argv -> the one line on stderr
        (
            str(tmp_path / "missing"),
            "--port",
            "0",
        ): f"error: run directory '{tmp_path / 'missing'}' not found",
        (str(tmp_path), "--max-batch-size", "0"): "error: --max-batch-size must be at least 1",
        (
            str(tmp_path),
            "--workers",
            "-1",
        ): "error: --workers must be at least 1 (or 0 for the automatic choice)",
    }
    procs = {
        argv: subprocess.Popen(
            [sys.executable, "-m", "agnews_lora", "serve", *argv],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for argv in cases
    }
    for argv, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.strip().splitlines() == [cases[argv]]
        assert "http://" not in out  # it never got as far as listening


def test_unbatched_server_and_graceful_sigterm(servers, predictor, texts):
    proc, url = servers["unbatched"].proc, servers["unbatched"].url
    assert HTTP.get(f"{url}/v1/info").json()["serving"]["batching"] is False
    with ThreadPoolExecutor(8) as pool:
        sleeper = hold_worker(url, 1200, pool)
        queued = [pool.submit(classify, url, {"text": t}) for t in texts[:6]]
        deadline = time.monotonic() + 10
        while stats(url)["queued_texts"] < 6:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)  # seven requests are in flight
        assert sleeper.result().status_code == 200
        for t, f in zip(texts[:6], queued):
            r = f.result()
            assert r.status_code == 200
            assert_matches_predictor(r.json()["results"], [t], predictor)
    rc = proc.wait(timeout=30)
    assert rc in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    err = servers["unbatched"].err_path.read_text()
    assert "stopped: 7 requests, 7 texts in 7 batches" in err  # one forward each, none lost
    assert "Traceback" not in err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2, verify=False)  # a fresh connection


def teardown_module():
    HTTP.close()


def test_lone_request_is_not_held_back_but_concurrent_ones_are_gathered():
    """One client alone never pays max_wait; requests that arrive together still share one forward pass."""
    import asyncio
    import time

    from agnews_lora.serve.batcher import MicroBatcher

    calls = []

    def fn(texts):
        calls.append(list(texts))
        return [t.upper() for t in texts]

    async def scenario():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=2000)
        b.start()
        lone = []
        for t in "xy":
            t0 = time.perf_counter()
            assert await b.submit([t]) == [t.upper()]
            lone.append(time.perf_counter() - t0)
        together = await asyncio.gather(*(b.submit([c]) for c in "bcdef"))
        await b.stop()
        return lone, together

    lone, together = asyncio.run(scenario())
    assert max(lone) < 1.0  # far below the 2 s max_wait
    assert together == [[c.upper()] for c in "bcdef"]
    assert calls == [["x"], ["y"], list("bcdef")]  # the five were gathered into one batch


def test_workers_share_the_queue_and_run_batches_concurrently():
    """Two workers: queued texts are split between the idle workers, both batches run at the same time,
    every caller gets its own results, and stop() waits for the batches in flight."""
    import asyncio

    from agnews_lora.serve.batcher import MicroBatcher

    lock, running, most, calls = threading.Lock(), [0], [0], []

    def fn(texts):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(len(texts))
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return [t * 2 for t in texts]

    async def scenario():
        b = MicroBatcher(fn, max_batch_size=32, max_wait_ms=50, workers=2)
        b.start()
        jobs = [asyncio.ensure_future(b.submit([str(i)])) for i in range(16)]
        await asyncio.sleep(0.1)  # both batches are running now
        assert b.stats_dict()["running_texts"] == 16
        await b.stop()  # finishes what is in flight
        assert all(j.done() for j in jobs)
        return [j.result() for j in jobs]

    results = asyncio.run(scenario())
    assert results == [[str(i) * 2] for i in range(16)]
    assert most[0] == 2
    assert sorted(calls) == [8, 8]  # 16 queued texts, 2 idle workers: 8 each


def test_python_api_resolves_automatic_workers(predictor):
    """`create_app` with the default options (workers 0 = auto) works as documented in docs/serving.md."""
    from fastapi.testclient import TestClient

    from agnews_lora.serve.app import ServeOptions, create_app
    from agnews_lora.serve.model import default_threads, default_workers, make_batch_fn

    assert [default_workers("cpu", n) for n in (1, 2, 16)] == [1, 2, 2]
    assert default_workers("cuda", 16) == 1
    assert [default_threads(t, w) for t, w in ((2, 2), (2, 1), (16, 2), (1, 1))] == [1, 1, 7, 1]
    app = create_app(predictor, make_batch_fn(predictor), ServeOptions(max_wait_ms=2))
    with TestClient(app) as client:
        assert client.get("/v1/info").json()["serving"]["workers"] == default_workers("cpu")
        r = client.post("/v1/classify", json={"texts": ["Stocks rally", "Cup final"]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_a_bug_in_a_batch_task_fails_its_callers_instead_of_leaving_them_waiting():
    import asyncio

    from agnews_lora.serve.batcher import MicroBatcher

    async def scenario():
        b = MicroBatcher(
            lambda texts: [t.upper() for t in texts], max_batch_size=8, max_wait_ms=0, workers=2
        )
        real = b._run_batch

        async def broken(batch, threads=1):
            raise KeyError("bug")

        b._run_batch = broken
        b.start()
        with pytest.raises(KeyError):
            await asyncio.wait_for(b.submit(["a"]), 5)
        b._run_batch = real  # the dispatcher and both workers are still there
        assert await asyncio.wait_for(asyncio.gather(b.submit(["b"]), b.submit(["c"])), 5) == [
            ["B"],
            ["C"],
        ]
        await b.stop()
        return b.stats.failed_requests

    assert asyncio.run(scenario()) == 1


# ---------------------------------------------------------------------------------------------
# threads follow the load


def test_thread_policy_gives_a_lone_batch_all_threads_and_shares_them_under_load():
    from agnews_lora.serve.threads import make_policy

    p = make_policy("cpu", cores=2)  # this machine's defaults: 2 workers, 1 thread each under load
    assert (p.total, p.workers, p.per_worker, p.adaptive) == (2, 2, 1, True)
    assert p.threads_for(running=0, queued_after=0) == 2 and p.is_solo(2)  # alone: all threads
    assert p.threads_for(running=0, queued_after=5) == 1  # a queue behind it: share the cores
    assert p.threads_for(running=1, queued_after=0) == 1 and not p.is_solo(1)
    big = make_policy("cpu", cores=16)
    assert (big.total, big.workers, big.per_worker) == (16, 2, 7)
    assert big.threads_for(0, 0) == 16 and big.threads_for(0, 32) == 7
    fixed = make_policy("cpu", cores=16, workers=3, threads=4)  # --threads: an explicit override
    assert not fixed.adaptive and fixed.threads_for(0, 0) == 4 and fixed.workers == 3
    assert make_policy("cpu", cores=2, workers=1).threads_for(0, 0) == 2  # --workers alone
    assert not make_policy("cpu", cores=1).adaptive  # nothing to share out
    assert not make_policy("cpu", cores=8, can_set_threads=False).adaptive  # e.g. ONNX Runtime
    assert not make_policy("cuda", cores=8).adaptive
    assert "alone 2 threads" in p.describe() and fixed.describe() == "3 workers x 4 threads"


def test_openvino_threads_follow_the_load_with_one_stream_alone_and_a_stream_per_worker():
    """A runtime with `use_threads` (OpenVINO) gets an adaptive policy: a batch alone runs on all
    threads in one stream, busy workers on their share in `workers` streams (with one stream the
    second worker's batch would wait for the first). ONNX Runtime (no setter) stays fixed."""
    from types import SimpleNamespace

    import torch

    from agnews_lora.serve.threads import can_set_threads, make_policy, thread_setter

    calls = []
    runtime = SimpleNamespace(use_threads=lambda n, streams: calls.append((n, streams)))
    ov = SimpleNamespace(backend=runtime, device=torch.device("cpu"))
    ort = SimpleNamespace(backend=SimpleNamespace(), device=torch.device("cpu"))
    assert can_set_threads(ov) and not can_set_threads(ort)
    policy = make_policy("cpu", 2, can_set_threads=can_set_threads(ov))
    setter = thread_setter(ov, policy)
    setter(policy.threads_for(0, 0))  # alone
    setter(policy.threads_for(1, 4))  # under load
    assert calls == [(2, 1), (1, 2)]
    fixed = make_policy("cpu", 16, workers=3, threads=4)  # --threads 4 --workers 3
    thread_setter(ov, fixed)(fixed.threads_for(0, 0))
    assert calls[-1] == (4, 3)  # three workers' batches at once
    assert thread_setter(ort, make_policy("cpu", 2, can_set_threads=False)) is None


def test_batcher_runs_a_lone_request_on_all_threads_and_a_queue_on_several_workers():
    """The thread count is set in the worker thread that runs the batch: a request alone gets
    all threads and nothing else starts beside it; a queue is shared out among the workers."""
    import asyncio

    from agnews_lora.serve.batcher import MicroBatcher
    from agnews_lora.serve.threads import make_policy

    local, lock, log, running, most = threading.local(), threading.Lock(), [], [0], [0]
    names = []
    both = threading.Barrier(2, timeout=30)  # the two shares of the queue meet: they run at once

    def set_threads(n):
        local.threads = n

    def fn(texts):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if len(texts) > 1:
            both.wait()  # breaks (fails the test) if the other share never runs beside this one
        else:
            time.sleep(0.2 if texts[0] == "slow" else 0.01)
        with lock:
            running[0] -= 1
            log.append((len(texts), local.threads, most[0]))
            names.append(threading.current_thread().name.split("_")[0])
        return [t + "!" for t in texts]

    async def scenario():
        b = MicroBatcher(
            fn, 32, 20, workers=2, threads=make_policy("cpu", 2), set_threads=set_threads
        )
        b.start()
        assert await b.submit(["a"]) == ["a!"]  # alone: one batch, all (2) threads
        lone = list(log)
        most[0] = 0
        first = asyncio.ensure_future(b.submit(["slow"]))  # alone too: it has the cores
        await asyncio.sleep(0.05)
        jobs = [asyncio.ensure_future(b.submit([str(i)])) for i in range(12)]
        await asyncio.sleep(0.01)
        assert b.stats_dict()["running_texts"] == 1  # nothing started beside the solo batch
        out = await asyncio.gather(first, *jobs)
        await b.stop()
        return lone, out, b.stats.solo_batches

    lone, out, solo = asyncio.run(scenario())
    assert lone == [(1, 2, 1)]
    assert out == [["slow!"]] + [[f"{i}!"] for i in range(12)]
    assert log[1] == (1, 2, 1)  # the slow one ran alone on 2 threads
    queued = log[2:]  # the 12 queued behind it: two batches of 6 side by side, one thread each
    assert sorted(n for n, _, _ in queued) == [6, 6]
    assert {t for _, t, _ in queued} == {1} and max(m for _, _, m in queued) == 2
    assert solo == 2
    # the solo batches have a thread of their own: no thread ever changes its thread count
    assert names == ["agnews-serve-solo"] * 2 + ["agnews-serve-model"] * 2


def test_single_request_is_served_correctly_when_threads_follow_the_load(
    trained_run, tmp_path, predictor, texts
):
    srv = ServerProcess(trained_run, tmp_path, "--threads", "0", "--workers", "2").ready()
    try:
        threads = HTTP.get(f"{srv.url}/v1/info").json()["serving"]["threads"]
        cores = threads["total"]
        assert threads["adaptive"] is (cores > 1) and threads["workers"] == 2
        for t in texts[:3]:  # one client: every request runs alone, on all the threads
            r = classify(srv.url, {"text": t})
            assert r.status_code == 200, r.text
            assert_matches_predictor(r.json()["results"], [t], predictor)
        s = stats(srv.url)
        assert s["batches"] == 3 and s["solo_batches"] == (3 if cores > 1 else 0)
    finally:
        srv.stop()
