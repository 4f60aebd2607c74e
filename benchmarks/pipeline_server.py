"""The baseline of `serve_load.py`: the server a user would write in ten minutes.

A transformers ``pipeline("text-classification")`` over the run's ``merged/`` model behind a
FastAPI endpoint with a plain ``def`` route, so every request runs on its own in FastAPI's thread
pool (up to 40 at once, each one forward pass with torch's default threads). Same request and
response shape as `agnews-lora serve`: ``POST /v1/classify`` with ``{"text": ...}`` or
``{"texts": [...]}`` -> ``{"results": [{"label", "label_name", "probabilities", "truncated"}]}``;
plus ``GET /health`` and, for the benchmark's bookkeeping only, ``GET /v1/info`` with counters.

    python benchmarks/pipeline_server.py runs/my-run --port 0     # prints its URL on stdout

Texts are truncated to the run's ``model.max_length`` (the pipeline would otherwise run up to the
tokenizer's 512 tokens, more work than ours does). The model loads as the pipeline loads it (the
checkpoint's dtype: fp32); ``--dtype bfloat16`` is there for a like-for-like precision comparison.
"""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline


class ClassifyRequest(BaseModel):
    text: str | None = None
    texts: list[str] | None = None


def build_app(run_dir: str, dtype: str | None = None) -> FastAPI:
    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    max_length = int(cfg["model"]["max_length"])
    kwargs = {"dtype": dtype} if dtype else {}
    clf = pipeline(
        "text-classification",
        model=str(Path(run_dir) / "merged"),
        top_k=None,
        device="cpu",
        **kwargs,
    )
    label2id = clf.model.config.label2id
    counters, lock = {"requests": 0, "texts": 0, "batches": 0}, threading.Lock()
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(req: ClassifyRequest):  # a plain def: FastAPI runs it in its thread pool
        texts = [req.text] if req.text is not None else req.texts
        scores = clf(texts, truncation=True, max_length=max_length)
        lengths = [len(ids) for ids in clf.tokenizer(texts)["input_ids"]]
        with lock:
            counters["requests"] += 1
            counters["texts"] += len(texts)
            counters["batches"] += 1
        return {
            "results": [
                {
                    "label": label2id[s[0]["label"]],
                    "label_name": s[0]["label"],
                    "probabilities": {d["label"]: d["score"] for d in s},
                    "truncated": n > max_length,
                }
                for s, n in zip(scores, lengths)
            ]
        }

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/info")
    def info():
        return {
            "precision": str(clf.model.dtype).replace("torch.", ""),
            "base_model": cfg["model"]["name_or_path"],
            "stats": dict(counters),
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--dtype", help="e.g. bfloat16 (default: as the pipeline loads the model)")
    args = ap.parse_args()
    app = build_app(args.run_dir, args.dtype)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    print(f"pipeline server on http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
