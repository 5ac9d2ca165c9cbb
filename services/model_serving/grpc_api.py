"""gRPC `doctag.v1.ModelServing`: Predict, PredictBatch, ListModels.

The call's deadline becomes the request's deadline in the batcher. Overload is answered at
once with RESOURCE_EXHAUSTED and a `retry-after-ms` trailing metadata entry (the seconds
are in `retry-after` too); a deadline that passes before the windows run gives DEADLINE_EXCEEDED.

The request's `tenant_id` is not trusted: the tenant recorded in the inference log is the one of
the job capability the tagging worker presents (verified with upload's public key), else none.
Who may call at all is decided by services/common/access.py.
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from services.common.access import CAPABILITY_KEY, deny, metadata_value
from services.common.capability import CapabilityVerifier, InvalidCapability
from services.common.context import tenant_id_var
from services.common.embeddings import pack
from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc

from .batcher import DeadlineExceeded, Overloaded
from .runner import InputError, ModelNotFound, ModelNotReady, ModelRefused, ModelRunner

SERVICE_NAME = "doctag.v1.ModelServing"
_EMBED_MODES = {pb.EMBED_MODE_QUERY: "query", pb.EMBED_MODE_PASSAGE: "passage"}
T = TypeVar("T")


def _prediction(tags: list[tuple[str, float]]) -> pb.Prediction:
    return pb.Prediction(tags=[pb.TagScore(tag=tag, score=score) for tag, score in tags])


async def _abort_for(exc: Exception, context: grpc.aio.ServicerContext) -> NoReturn:
    if isinstance(exc, InputError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, Overloaded):
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), trailing_metadata=(
            ("retry-after-ms", str(math.ceil(exc.retry_after * 1000))),
            ("retry-after", str(max(1, math.ceil(exc.retry_after))))))
    if isinstance(exc, DeadlineExceeded):
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, ModelNotFound):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"model: {exc}")
    if isinstance(exc, ModelRefused):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"model: {exc}")
    await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    raise AssertionError("unreachable: context.abort() raises")


class ModelServingServicer(pb_grpc.ModelServingServicer):
    def __init__(self, runner: ModelRunner, capabilities: CapabilityVerifier | None) -> None:
        self.runner = runner
        self.capabilities = capabilities

    async def _tenant(self, context: grpc.aio.ServicerContext, method: str) -> str | None:
        """The tenant of the job capability that came with the call (None without one); a capability
        that does not verify is refused."""
        token = metadata_value(context, CAPABILITY_KEY)
        if not token:
            tenant_id_var.set(None)
            return None
        try:
            if self.capabilities is None:
                raise InvalidCapability("this server cannot verify job capabilities")
            tenant: str | None = self.capabilities.verify(token).tenant_id
        except InvalidCapability as exc:
            await deny(context, "model-serving", f"/{SERVICE_NAME}/{method}", "capability", str(exc))
            raise AssertionError("unreachable") from None
        tenant_id_var.set(tenant)
        return tenant

    async def _answer(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (InputError, Overloaded, DeadlineExceeded, ModelNotFound, ModelRefused, ModelNotReady) as exc:
            await _abort_for(exc, context)

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        tenant = await self._tenant(context, "Predict")
        deadline = self.runner.deadline_from(context.time_remaining())

        async def run() -> pb.PredictResponse:
            self.runner.validate([request.text], "text", batch=False)
            top_k = self.runner.resolve_top_k(request.top_k)
            info, tags = await self.runner.predict([request.text], top_k, model=request.model or None,
                                                   deadline=deadline, tenant_id=tenant)
            return pb.PredictResponse(model=info.name, version=info.version, prediction=_prediction(tags[0]))

        return await self._answer(context, run)

    async def PredictBatch(self, request: pb.PredictBatchRequest,
                           context: grpc.aio.ServicerContext) -> pb.PredictBatchResponse:
        tenant = await self._tenant(context, "PredictBatch")
        deadline = self.runner.deadline_from(context.time_remaining())

        async def run() -> pb.PredictBatchResponse:
            texts = list(request.texts)
            self.runner.validate(texts, "texts", batch=True)
            top_k = self.runner.resolve_top_k(request.top_k)
            info, tags = await self.runner.predict(texts, top_k, model=request.model or None,
                                                   deadline=deadline, tenant_id=tenant)
            return pb.PredictBatchResponse(model=info.name, version=info.version,
                                           predictions=[_prediction(t) for t in tags])

        return await self._answer(context, run)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext) -> pb.EmbedResponse:
        """Unit vectors for retrieval (base multilingual-e5-small, "query: " / "passage: " prefixes)."""
        await self._tenant(context, "Embed")
        deadline = self.runner.deadline_from(context.time_remaining())

        async def run() -> pb.EmbedResponse:
            mode = _EMBED_MODES.get(request.mode)
            if mode is None:
                raise InputError("mode", "must be EMBED_MODE_QUERY or EMBED_MODE_PASSAGE")
            texts = list(request.texts)
            self.runner.validate(texts, "texts", batch=True)
            name, version, vectors = await self.runner.embed(texts, mode, deadline=deadline)
            return pb.EmbedResponse(model=name, version=version, dim=int(vectors.shape[1]),
                                    embeddings=[pb.Embedding(vector=pack(v)) for v in vectors])

        return await self._answer(context, run)

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        """The loaded models (the default one flagged); empty while none is loaded."""
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(name=m.name, version=m.version, labels=m.labels, manifest_sha256=m.manifest_sha256,
                         loaded=True, default=m.default)
            for m in self.runner.loaded_models()])
