"""`agnews-lora serve`: a finished run behind an HTTP endpoint (FastAPI + uvicorn), micro-batched.

- `app`: the FastAPI application (endpoints, error handlers);
- `limits`: `ServeOptions`, request validation (`parse_texts`), the body-size cap, error bodies;
- `batcher`: `MicroBatcher`, gathering concurrent requests into batches on worker threads;
- `model`: the batch function (`Predictor.classify`), warm-up, worker and thread counts;
- `server`: option checks, binding, uvicorn with a read timeout for slow clients, `serve()`.
"""
