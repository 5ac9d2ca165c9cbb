"""Test helper: model-serving's real gRPC servicer and runner on a free loopback port, in a thread
with its own event loop, so module-scoped fixtures can share one (the embedding model loads once,
on the first Embed call). Only Embed is used by the search tests; no tagging model is loaded."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from services.common.embeddings import Embedding, unpack
from services.common.grpc_utils import bind, create_server
from services.common.pb import model_serving_pb2, model_serving_pb2_grpc
from services.model_serving.grpc_api import ModelServingServicer
from services.model_serving.runner import ModelRunner
from services.model_serving.settings import ModelServingSettings
from tests.support import grpc_security, sync_channel


@contextmanager
def embedding_server(**overrides: Any) -> Iterator[str]:
    """Yields "127.0.0.1:PORT" of a running model-serving gRPC server."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        runner = ModelRunner(ModelServingSettings(inference_threads=2, **overrides))
        # As the service runs: mutual TLS with the session's model-serving certificate.
        server = create_server("test-model-serving", grpc_security("model-serving"))
        model_serving_pb2_grpc.add_ModelServingServicer_to_server(  # type: ignore[no-untyped-call]
            ModelServingServicer(runner, None), server)
        box["port"] = bind(server, "127.0.0.1:0", grpc_security("model-serving"))
        await server.start()
        box["server"], box["runner"] = server, runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="test-model-serving", daemon=True)
    thread.start()
    started.wait(60)
    try:
        yield f"127.0.0.1:{box['port']}"
    finally:
        async def stop() -> None:
            await box["server"].stop(0)
            await box["runner"].aclose()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def embed(target: str, texts: list[str], mode: str = "passage") -> list[Embedding]:
    """Embeddings through the real gRPC API (a synchronous client)."""
    with sync_channel(target, "tagging-worker", "model-serving") as channel:
        stub = model_serving_pb2_grpc.ModelServingStub(channel)  # type: ignore[no-untyped-call]
        response = stub.Embed(model_serving_pb2.EmbedRequest(
            texts=texts, mode=model_serving_pb2.EMBED_MODE_PASSAGE if mode == "passage"
            else model_serving_pb2.EMBED_MODE_QUERY), timeout=300)
    return [Embedding(response.model, response.version, e.vector) for e in response.embeddings]


def as_array(embedding: Embedding) -> np.ndarray:
    return unpack(embedding.vector)
