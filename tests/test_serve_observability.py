"""`serve`: GET /metrics (Prometheus text format) and the demo page at GET /, against a real server
on loopback; the demo page is also run in headless Chromium."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from browser import distinct_colours, dump_dom, requires_chromium, screenshot
from helpers import ServerProcess


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    proc = ServerProcess(trained_run, tmp_path_factory.mktemp("serve-obs"), "--workers", "1")
    try:
        yield proc.ready().url
    finally:
        proc.stop()


def _samples(text: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _get(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_latencies_batches_and_texts(server):
    with httpx.Client(base_url=server, timeout=30) as c:
        before = _samples(c.get("/metrics").text)
        for body in (
            {"text": "Stocks rally"},
            {"texts": ["Cup final", "New chip"]},
            {"text": "Oil falls"},
        ):
            assert c.post("/v1/classify", json=body).status_code == 200
        assert c.post("/v1/classify", json={"texts": []}).status_code == 422
        assert c.get("/no/such/path").status_code == 404
        resp = c.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = _samples(resp.text)

    def delta(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    ok = {"endpoint": "/v1/classify", "method": "POST", "status": "200"}
    assert delta("agnews_http_requests_total", **ok) == 3
    assert (
        delta("agnews_http_requests_total", endpoint="/v1/classify", method="POST", status="422")
        == 1
    )
    assert delta("agnews_http_requests_total", endpoint="other", method="GET", status="404") == 1
    assert (
        delta("agnews_http_request_duration_seconds_count", endpoint="/v1/classify", status="200")
        == 3
    )
    assert (
        delta("agnews_http_request_duration_seconds_sum", endpoint="/v1/classify", status="200") > 0
    )
    assert delta("agnews_classified_texts_total") == 4
    assert delta("agnews_batch_size_texts_sum") == 4
    assert 1 <= delta("agnews_batch_size_texts_count") <= 3
    assert delta("agnews_batch_duration_seconds_count") == delta("agnews_batch_size_texts_count")
    assert _get(after, "agnews_queue_texts") == 0 and _get(after, "agnews_running_texts") == 0
    info = [k for k in after if k[0] == "agnews_model_info"]
    assert info and ("run", "tiny-run") in info[0][1]


def test_each_app_has_its_own_registry(trained_run):
    from agnews_lora.prediction import Predictor
    from agnews_lora.serve.app import ServeOptions, create_app

    p = Predictor.from_run(trained_run, precision="fp32")
    apps = [create_app(p, p.classify, ServeOptions(), trained_run) for _ in range(2)]
    assert len(apps) == 2  # the global registry would refuse the second app's metrics


def test_demo_page_is_served_without_external_resources(server):
    resp = httpx.get(f"{server}/", timeout=30)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "v1/classify" in resp.text and "<textarea" in resp.text
    assert "http://" not in resp.text and "https://" not in resp.text
    assert "/" not in [r for r in httpx.get(f"{server}/openapi.json").json()["paths"]]


@requires_chromium
def test_demo_page_classifies_in_headless_chromium(server, tmp_path):
    text = "Stocks rally as oil prices fall"
    want = httpx.post(f"{server}/v1/classify", json={"text": text}, timeout=30).json()
    want = want["results"][0]
    url = f"{server}/?text={quote(text)}"
    dom = dump_dom(url, tmp_path)
    assert f'<span id="label">{want["label_name"]}</span>' in dom
    assert dom.count('class="pct"') == len(want["probabilities"])
    top = max(want["probabilities"].values())
    assert f"{100 * top:.1f} %" in dom and "tiny-run" in dom
    png = screenshot(url, tmp_path / "demo.png", tmp_path, "900,700", wait_ms=5000)
    assert distinct_colours(png) > 100
