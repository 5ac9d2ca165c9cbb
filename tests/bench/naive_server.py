"""The naive baseline of `make bench-model`: what a newcomer would write to serve the tagger.

A plain FastAPI app, one uvicorn worker, `POST /predict` with {"text": ...}: the model is
called once per request, synchronously in the event loop, with no batching and no queue.
No authentication either, which only flatters it. `--threads N` pins torch's thread count
(the benchmark passes model-serving's, so the comparison is about serving, not about threads
fighting over a shared host); without it torch's default is used.

The model is loaded through `services.model_serving.inference.load_model` and called through
its unbatched reference path `probabilities(model, [text])` when the module has them (so a
custom architecture works too); otherwise as a plain Hugging Face artifact:
`AutoTokenizer` + `AutoModelForSequenceClassification`, `tokenizer(text, truncation=True)`
and one forward pass per request.

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

    The inference module's default options, except that int8 quantisation (one of model-serving's
    optimisations) stays off unless `quantize`: the baseline runs the model as trained.
    """
    import dataclasses

    from services.model_serving import inference

    load_model = getattr(inference, "load_model", None)
    probabilities = getattr(inference, "probabilities", None)
    if callable(load_model) and callable(probabilities):
        options_cls = getattr(inference, "InferenceOptions", None)
        if options_cls is None:
            model = load_model(model_dir)
        else:
            fields = {f.name for f in dataclasses.fields(options_cls)}
            model = load_model(model_dir, options_cls(**({"quantize": quantize} if "quantize" in fields else {})))

        def reference(text: str) -> np.ndarray:
            return np.asarray(probabilities(model, [text]))[0]

        int8 = ", int8" if quantize else ""
        return reference, list(model.labels), f"inference.load_model + probabilities(model, [text]){int8}"
    return _transformers(model_dir)


def _transformers(model_dir: Path) -> tuple[PerText, list[str], str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def plain(text: str) -> np.ndarray:
        with torch.no_grad():
            inputs = tokenizer(text, truncation=True, return_tensors="pt")
            return torch.softmax(model(**inputs).logits, dim=-1)[0].numpy()

    return plain, labels, "transformers AutoModelForSequenceClassification, tokenizer(truncation=True)"


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
