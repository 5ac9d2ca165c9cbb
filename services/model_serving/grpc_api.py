"""gRPC `doctag.v1.ModelServing`: Predict, PredictBatch, ListModels."""
from __future__ import annotations

import grpc

from services.common.context import tenant_id_var
from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc

from .runner import InputError, ModelNotReady, ModelRunner

SERVICE_NAME = "doctag.v1.ModelServing"


def _prediction(tags: list[tuple[str, float]]) -> pb.Prediction:
    return pb.Prediction(tags=[pb.TagScore(tag=tag, score=score) for tag, score in tags])


class ModelServingServicer(pb_grpc.ModelServingServicer):
    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        tenant_id_var.set(request.tenant_id or None)
        try:
            self.runner.validate([request.text], "text", batch=False)
            top_k = self.runner.resolve_top_k(request.top_k)
            info, tags = await self.runner.predict([request.text], top_k)
        except InputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelNotReady as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.PredictResponse(model=info.name, version=info.version, prediction=_prediction(tags[0]))

    async def PredictBatch(self, request: pb.PredictBatchRequest,
                           context: grpc.aio.ServicerContext) -> pb.PredictBatchResponse:
        tenant_id_var.set(request.tenant_id or None)
        try:
            texts = list(request.texts)
            self.runner.validate(texts, "texts", batch=True)
            top_k = self.runner.resolve_top_k(request.top_k)
            info, tags = await self.runner.predict(texts, top_k)
        except InputError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ModelNotReady as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.PredictBatchResponse(model=info.name, version=info.version,
                                       predictions=[_prediction(t) for t in tags])

    async def ListModels(self, request: pb.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        """The model this process serves; empty while none is loaded (the registry is a later issue)."""
        info = self.runner.info
        if info is None:
            return pb.ListModelsResponse()
        return pb.ListModelsResponse(models=[pb.ModelInfo(
            name=info.name, version=info.version, labels=info.labels,
            manifest_sha256=info.manifest_sha256, loaded=True)])
