"""HTTP API of model-serving: `POST /api/v1/predict` plus the shared operational routes.

A request may bring its time budget in the `X-Request-Timeout-Ms` header (default
DOCTAG_DEFAULT_DEADLINE_MS). Overload is answered at once with 503 and `Retry-After`;
a deadline that passes before the model ran the texts gives 504.
"""
from __future__ import annotations

import math
from typing import Literal

from fastapi import Depends, FastAPI, Header
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError
from services.common.http import ReadinessCheck, create_app

from .batcher import DeadlineExceeded, Overloaded
from .runner import InputError, ModelNotFound, ModelNotReady, ModelRefused, ModelRunner
from .settings import ModelServingSettings


class PredictBody(BaseModel):
    """Exactly one of `text` (one document) or `texts` (several, answered in order)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    top_k: int | None = Field(None, ge=1, description="tags per text; default from DOCTAG_TOP_K")
    model: str | None = Field(None, min_length=1, max_length=200,
                              description="'name:version', 'name@alias', an alias or a version; default: production")


class TagOut(BaseModel):
    tag: str
    score: float


class PredictionOut(BaseModel):
    tags: list[TagOut]


class PredictOut(BaseModel):
    model: str
    version: str
    predictions: list[PredictionOut]


class EmbedBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., description="texts to embed, answered in order")
    mode: Literal["query", "passage"] = Field(..., description='"query" for search queries, "passage" for documents')


class EmbedOut(BaseModel):
    model: str
    version: str
    dim: int
    embeddings: list[list[float]]


TIMEOUT_HEADER = "X-Request-Timeout-Ms"


_RUNNER_ERRORS = (InputError, Overloaded, DeadlineExceeded, ModelNotFound, ModelRefused, ModelNotReady)


def _problem(exc: Exception) -> ProblemError:
    """The problem+json answer for what the runner raised."""
    if isinstance(exc, InputError):
        return ProblemError(422, exc.message, field=exc.field)
    if isinstance(exc, Overloaded):
        return ProblemError(503, str(exc), slug="overloaded", title="Overloaded",
                            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, DeadlineExceeded):
        return ProblemError(504, str(exc), slug="deadline-exceeded", title="Deadline exceeded")
    if isinstance(exc, ModelNotFound):
        return ProblemError(404, str(exc), field="model")
    if isinstance(exc, ModelRefused):
        return ProblemError(409, str(exc), field="model")
    if isinstance(exc, ModelNotReady):
        return ProblemError(503, str(exc), headers={"Retry-After": "5"})
    raise AssertionError(f"not a runner error: {exc!r}")


def build_app(settings: ModelServingSettings, runner: ModelRunner,
              readiness: dict[str, ReadinessCheck] | None = None) -> FastAPI:
    """`readiness`: checks besides the model's (the registry's, when there is one)."""
    app = create_app(settings.service_name, title="doctag model-serving",
                     readiness={"model": runner.ready_check, **(readiness or {})},
                     max_body_bytes=settings.max_request_bytes, api_docs=settings.api_docs,
                     body_limits={"/api/v1/models": settings.models_max_request_bytes,
                                  "/api/v1/datasets": settings.datasets_max_request_bytes})
    verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)

    @app.post("/api/v1/embed", response_model=EmbedOut, tags=["embed"])
    async def embed(body: EmbedBody, principal: Principal = Depends(verifier),
                    timeout_ms: int | None = Header(None, alias=TIMEOUT_HEADER, ge=1, le=600_000)) -> EmbedOut:
        """L2-normalised retrieval vectors from the base multilingual-e5-small ("query: " / "passage: ")."""
        deadline = runner.deadline_from(None if timeout_ms is None else timeout_ms / 1000)
        try:
            runner.validate(body.texts, "texts", batch=True)
            name, version, vectors = await runner.embed(body.texts, body.mode, deadline=deadline)
        except _RUNNER_ERRORS as exc:
            raise _problem(exc) from None
        return EmbedOut(model=name, version=version, dim=int(vectors.shape[1]),
                        embeddings=[[float(x) for x in v] for v in vectors])

    @app.post("/api/v1/predict", response_model=PredictOut, tags=["predict"])
    async def predict(body: PredictBody, principal: Principal = Depends(verifier),
                      timeout_ms: int | None = Header(None, alias=TIMEOUT_HEADER, ge=1, le=600_000)) -> PredictOut:
        """Tags with their probability, best first, for each text."""
        deadline = runner.deadline_from(None if timeout_ms is None else timeout_ms / 1000)
        if (body.text is None) == (body.texts is None):
            raise ProblemError(422, "give exactly one of 'text' or 'texts'", field="text")
        batch = body.texts is not None
        texts = body.texts if body.texts is not None else [body.text or ""]
        try:
            runner.validate(texts, "texts" if batch else "text", batch=batch)
            top_k = runner.resolve_top_k(body.top_k)
            info, tags = await runner.predict(texts, top_k, model=body.model, deadline=deadline,
                                              tenant_id=principal.tenant_id)
        except _RUNNER_ERRORS as exc:
            raise _problem(exc) from None
        return PredictOut(model=info.name, version=info.version, predictions=[
            PredictionOut(tags=[TagOut(tag=t, score=s) for t, s in doc]) for doc in tags])

    return app
