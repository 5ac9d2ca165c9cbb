"""The naive baseline of `make bench-model`: what a newcomer would write to serve the tagger.

A plain FastAPI app, one uvicorn worker, `POST /predict` with {"text": ...}: the model is
called once per request, synchronously in the event loop, with no batching and no queue.
No authentication either, which only flatters it. `--threads N` pins torch's thread count
(the benchmark passes model-serving's, so the comparison is about serving, not about threads
fighting over a shared host); without it torch's default is used.

The model is loaded through `services.model_serving.models.loader.load_model` with torch (the
transformers model as trained, no ONNX Runtime) and called through the unbatched reference
path `probabilities(model, [text])`, one text per request.

Run: python -m tests.bench.naive_server --model-dir DIR --port PORT
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel

PerText = Callable[[str], np.ndarray]


class Body(BaseModel):
    text: str


def load_per_text(model_dir: Path, *, quantize: bool = False) -> tuple[PerText, list[str], str]:
    """(text -> label probabilities, labels, which path is used).

    The inference module's default options: plain torch (no ONNX Runtime), and int8
    quantisation (one of model-serving's optimisations) only when `quantize`.
    """
    from services.model_serving.models.base import InferenceOptions, probabilities
    from services.model_serving.models.loader import load_model

    model = load_model(model_dir, InferenceOptions(quantize=quantize))

    def reference(text: str) -> np.ndarray:
        return np.asarray(probabilities(model, [text]))[0]

    int8 = ", int8" if quantize else ""
    return reference, list(model.labels), f"inference.load_model + probabilities(model, [text]){int8}"


def build_app(model_dir: Path, *, quantize: bool = False):  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    predict_one, labels, path = load_per_text(model_dir, quantize=quantize)
    app = FastAPI(title="naive tagger")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready", "path": path}

    @app.post("/predict")
    async def predict(body: Body) -> dict[str, list[dict[str, float | str]]]:
        probs = predict_one(body.text)  # blocks the event loop: one request at a time
        best = np.argsort(-probs)[:3]
        return {"tags": [{"tag": labels[i], "score": float(probs[i])} for i in best]}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quantize", action="store_true", help="int8 like model-serving (default: as trained)")
    args = parser.parse_args()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    uvicorn.run(build_app(args.model_dir.resolve(), quantize=args.quantize), host=args.host, port=args.port, workers=1,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
