"""HTTP API of model-serving: `POST /api/v1/predict` plus the shared operational routes."""
from __future__ import annotations

from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from services.common.auth import Principal, TokenVerifier
from services.common.errors import ProblemError
from services.common.http import create_app

from .runner import InputError, ModelNotReady, ModelRunner
from .settings import ModelServingSettings


class PredictBody(BaseModel):
    """Exactly one of `text` (one document) or `texts` (several, answered in order)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    texts: list[str] | None = None
    top_k: int | None = Field(None, ge=1, description="tags per text; default from DOCTAG_TOP_K")


class TagOut(BaseModel):
    tag: str
    score: float


class PredictionOut(BaseModel):
    tags: list[TagOut]


class PredictOut(BaseModel):
    model: str
    version: str
    predictions: list[PredictionOut]


def build_app(settings: ModelServingSettings, runner: ModelRunner) -> FastAPI:
    app = create_app(settings.service_name, title="doctag model-serving",
                     readiness={"model": runner.ready_check})
    verifier = TokenVerifier(settings.public_key_path, settings.jwt_issuer, settings.jwt_audience)

    @app.post("/api/v1/predict", response_model=PredictOut, tags=["predict"])
    async def predict(body: PredictBody, principal: Principal = Depends(verifier)) -> PredictOut:
        """Tags with their probability, best first, for each text."""
        if (body.text is None) == (body.texts is None):
            raise ProblemError(422, "give exactly one of 'text' or 'texts'", field="text")
        batch = body.texts is not None
        texts = body.texts if body.texts is not None else [body.text or ""]
        try:
            runner.validate(texts, "texts" if batch else "text", batch=batch)
            top_k = runner.resolve_top_k(body.top_k)
            info, tags = await runner.predict(texts, top_k)
        except InputError as exc:
            raise ProblemError(422, exc.message, field=exc.field) from None
        except ModelNotReady as exc:
            raise ProblemError(503, str(exc), headers={"Retry-After": "5"}) from None
        return PredictOut(model=info.name, version=info.version, predictions=[
            PredictionOut(tags=[TagOut(tag=t, score=s) for t, s in doc]) for doc in tags])

    return app
