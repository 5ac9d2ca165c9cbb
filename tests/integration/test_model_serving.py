"""model-serving as a real process: gRPC ModelServing + health, HTTP predict with JWT auth,
the committed model, and refusal of a corrupted artifact."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from services.model_serving.models.base import WindowModel, predict_detailed
from services.model_serving.models.loader import load_model
from services.model_serving.models.manifest import sha256_file
from services.model_serving.settings import DEFAULT_MODEL_DIR, ModelServingSettings
from tests.conftest import DATA
from tests.support import sync_channel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVICE = "doctag.v1.ModelServing"
SPORTS = "손흥민 시즌 10호 골…토트넘 역전승"
ECONOMY = "코스피 2% 급락…외국인 매도에 환율 1,400원 돌파"
TIMEOUT = 30
MANIFEST = json.loads((DEFAULT_MODEL_DIR / "manifest.json").read_text(encoding="utf-8"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    http: str
    grpc_target: str
    log: Path
    channel: grpc.Channel

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-5000:]


def _start(tmp: Path, key_dir: Path, model_dir: Path, extra_env: dict[str, str] | None = None) -> Service:
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DOCTAG_HTTP_PORT": str(http_port),
           "DOCTAG_GRPC_PORT": str(grpc_port), "DOCTAG_MODEL_DIR": str(model_dir), "DOCTAG_TORCH_THREADS": "1",
           "DOCTAG_JWT_PUBLIC_KEY_FILE": str(key_dir / "jwt_public.pem"), "DOCTAG_STATE_DIR": str(tmp / "var"),
           **(extra_env or {})}
    log = tmp / "model-serving.log"
    with log.open("wb") as out:
        # cwd is a temporary directory: the service must not depend on being started from the repo.
        process = subprocess.Popen([sys.executable, "-m", "services.model_serving"], cwd=tmp, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    return Service(process, f"http://127.0.0.1:{http_port}", target, log,
                   sync_channel(target, "tagging-worker", "model-serving"))


def _health(service: Service, name: str = "") -> int | None:
    try:
        stub = health_pb2_grpc.HealthStub(service.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status
    except grpc.RpcError:
        return None


def _wait_for_health(service: Service, status: int, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"model-serving exited with {service.process.returncode}:\n{service.output()}")
        if _health(service, SERVICE) == status:
            return
        time.sleep(0.3)
    pytest.fail(f"model-serving did not reach health status {status}:\n{service.output()}")


def _stop(service: Service) -> int:
    service.channel.close()
    if service.process.poll() is None:
        service.process.send_signal(signal.SIGTERM)
        try:
            service.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
    return service.process.returncode


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, test_db_name: str) -> Iterator[Service]:
    """The shipped model served as in production: registry on, in this session's database."""
    svc = _start(tmp_path_factory.mktemp("model-serving"), key_dir, DEFAULT_MODEL_DIR,
                 {"DOCTAG_MODEL_REGISTRY": "true", "DOCTAG_DB_NAME": test_db_name})
    try:
        _wait_for_health(svc, health_pb2.HealthCheckResponse.SERVING)
        yield svc
    finally:
        _stop(svc)


@pytest.fixture(scope="module")
def stub(service: Service) -> pb_grpc.ModelServingStub:
    return pb_grpc.ModelServingStub(service.channel)


@pytest.fixture(scope="module")
def local_model() -> WindowModel:
    """The shipped model in this process, read as the service reads it (same DOCTAG_* options)."""
    return load_model(DEFAULT_MODEL_DIR, ModelServingSettings().inference_options())


def _tags(prediction: pb.Prediction) -> list[tuple[str, float]]:
    return [(t.tag, t.score) for t in prediction.tags]


def test_health_is_serving(service: Service) -> None:
    assert _health(service, "") == health_pb2.HealthCheckResponse.SERVING
    assert _health(service, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{service.http}/readyz", timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{service.http}/healthz", timeout=TIMEOUT).status_code == 200


@pytest.fixture(scope="module")
def served_version(service: Service, admin_dsn: str) -> str:
    """The registry version `production` points at in this session's database (the shipped model's)."""
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute(
            "SELECT a.version, v.manifest_sha256 FROM models.aliases a JOIN models.versions v "
            "ON v.model_name = a.model_name AND v.version = a.version "
            "WHERE a.model_name = %s AND a.alias = 'production'", (MANIFEST["name"],)).fetchone()
    assert row is not None, f"the shipped model is not registered in this session's database:\n{service.output()}"
    assert row[1] == sha256_file(DEFAULT_MODEL_DIR / "manifest.json")
    return str(row[0])


def test_service_uses_this_sessions_database_never_the_live_one(service: Service, served_version: str) -> None:
    """With `make up` running on the same machine, the tests' model-serving must register and log into
    the test database: the shipped model is `production` in this session's registry (the fixture reads
    it there), and the version served is that one."""
    response = pb_grpc.ModelServingStub(service.channel).Predict(pb.PredictRequest(text=SPORTS), timeout=TIMEOUT)
    assert response.version == served_version


def test_predict_sports_and_economy(stub: pb_grpc.ModelServingStub, served_version: str) -> None:
    metadata = (("x-request-id", "test-predict-1"),)
    sports = stub.Predict(pb.PredictRequest(text=SPORTS), timeout=TIMEOUT, metadata=metadata)
    economy = stub.Predict(pb.PredictRequest(text=ECONOMY, top_k=2), timeout=TIMEOUT, metadata=metadata)
    assert sports.model == "doctag-tagger" and sports.version == served_version
    # Plausibility (a decently trained model): clear headlines get their topic first.
    assert sports.prediction.tags[0].tag == "스포츠"
    assert economy.prediction.tags[0].tag == "경제"
    assert 1 <= len(economy.prediction.tags) <= 2
    for response in (sports, economy):
        scores = [t.score for t in response.prediction.tags]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_predict_batch_keeps_order_and_equals_single(stub: pb_grpc.ModelServingStub) -> None:
    texts = [ECONOMY, SPORTS, "국회 본회의, 추경 예산안 처리 불발", "새 스마트폰 AI 칩 탑재…배터리 수명 향상"]
    batch = stub.PredictBatch(pb.PredictBatchRequest(texts=texts, top_k=3), timeout=TIMEOUT)
    assert len(batch.predictions) == len(texts)
    for text, prediction in zip(texts, batch.predictions, strict=True):
        single = stub.Predict(pb.PredictRequest(text=text, top_k=3), timeout=TIMEOUT).prediction
        assert [t for t, _ in _tags(prediction)] == [t for t, _ in _tags(single)]
        for (_, a), (_, b) in zip(_tags(prediction), _tags(single), strict=True):
            assert a == pytest.approx(b, abs=1e-4)
    assert batch.predictions[1].tags[0].tag == "스포츠"
    assert batch.predictions[0].tags[0].tag == "경제"


def test_list_models(stub: pb_grpc.ModelServingStub, served_version: str) -> None:
    response = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT)
    [model] = response.models
    assert model.loaded and model.name == "doctag-tagger" and model.version == served_version
    assert list(model.labels) == MANIFEST["labels"]
    assert model.manifest_sha256 == sha256_file(DEFAULT_MODEL_DIR / "manifest.json")


@pytest.mark.parametrize("request_", [pb.PredictRequest(text=""), pb.PredictRequest(text=" \n\t"),
                                      pb.PredictRequest(text="뉴스", top_k=-1)])
def test_predict_invalid_argument(stub: pb_grpc.ModelServingStub, request_: pb.PredictRequest) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details()


@pytest.mark.parametrize(("texts", "field"), [([], "texts"), (["뉴스"] * 65, "texts"), (["뉴스", ""], "texts.1")])
def test_predict_batch_invalid_argument(stub: pb_grpc.ModelServingStub, texts: list[str], field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.PredictBatch(pb.PredictBatchRequest(texts=texts), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"{field}:")


def test_long_text_is_windowed_and_answered(stub: pb_grpc.ModelServingStub, local_model: WindowModel) -> None:
    long_petition = None
    with (DATA / "petitions_train.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if len(record["text"]) > 5000:
                long_petition = f"{record['title']}\n{record['text']}"
                break
    assert long_petition is not None
    windows = local_model.prepare([long_petition])[0].windows
    assert 1 < len(windows) <= ModelServingSettings().max_windows
    [detail] = predict_detailed(local_model, [long_petition], top_k=3)
    assert detail.n_windows == len(windows)
    response = stub.Predict(pb.PredictRequest(text=long_petition, top_k=3), timeout=TIMEOUT)
    assert [t.tag for t in response.prediction.tags] == [t for t, _ in detail.tags]
    assert response.prediction.tags[0].score == pytest.approx(detail.tags[0][1], abs=1e-4)


def test_http_predict_with_token(service: Service, served_version: str, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {make_token('00000000-0000-0000-0000-000000000001')}"}
    single = httpx.post(f"{service.http}/api/v1/predict", json={"text": SPORTS}, headers=headers, timeout=TIMEOUT)
    assert single.status_code == 200, single.text
    body = single.json()
    assert body["model"] == "doctag-tagger" and body["version"] == served_version
    assert len(body["predictions"]) == 1 and body["predictions"][0]["tags"][0]["tag"] == "스포츠"
    assert set(body["predictions"][0]["tags"][0]) == {"tag", "score"}
    batch = httpx.post(f"{service.http}/api/v1/predict", json={"texts": [ECONOMY, SPORTS], "top_k": 1},
                       headers=headers, timeout=TIMEOUT)
    assert batch.status_code == 200, batch.text
    assert [p["tags"][0]["tag"] for p in batch.json()["predictions"]] == ["경제", "스포츠"]
    assert all(len(p["tags"]) == 1 for p in batch.json()["predictions"])


def test_http_predict_without_token_is_401(service: Service) -> None:
    response = httpx.post(f"{service.http}/api/v1/predict", json={"text": SPORTS}, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_http_predict_with_forged_token_is_401(service: Service, tmp_path: Path) -> None:
    from services.common.auth import ensure_keypair, sign_token

    ensure_keypair(tmp_path)
    forged = sign_token(private_key_file=tmp_path / "jwt_private.pem", user_id="u", tenant_id="t", tenant_slug="t",
                        username="x", roles=["user"], issuer="doctag", audience="doctag-api", ttl_seconds=60)
    response = httpx.post(f"{service.http}/api/v1/predict", json={"text": SPORTS},
                          headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT)
    assert response.status_code == 401


@pytest.mark.parametrize(("body", "field"), [
    ({}, "text"),
    ({"text": SPORTS, "texts": [ECONOMY]}, "text"),
    ({"text": ""}, "text"),
    ({"text": 5}, "text"),
    ({"texts": []}, "texts"),
    ({"texts": "not a list"}, "texts"),
    ({"texts": [SPORTS, "  "]}, "texts.1"),
    ({"texts": ["뉴스"] * 65}, "texts"),
    ({"text": SPORTS, "top_k": 0}, "top_k"),
    ({"text": SPORTS, "label": "x"}, "label"),
])
def test_http_bad_body_is_422_naming_the_field(service: Service, make_token, body: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {make_token('00000000-0000-0000-0000-000000000001')}"}
    response = httpx.post(f"{service.http}/api/v1/predict", json=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = [e["field"] for e in response.json()["errors"]]
    assert field in fields, fields


def test_http_and_grpc_embed(service: Service, make_token) -> None:  # type: ignore[no-untyped-def]
    """Retrieval vectors from the base e5 (loaded in the background after the tagging model)."""
    headers = {"Authorization": f"Bearer {make_token('00000000-0000-0000-0000-000000000001')}",
               "X-Request-Timeout-Ms": "180000"}
    response = httpx.post(f"{service.http}/api/v1/embed", json={"texts": [SPORTS, "축구 경기 결과"], "mode": "query"},
                          headers=headers, timeout=200)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"].startswith("multilingual-e5-small@") and body["version"] == "query/1x128/mean"
    assert body["dim"] == 384 and len(body["embeddings"]) == 2
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in body["embeddings"])
    bad = httpx.post(f"{service.http}/api/v1/embed", json={"texts": [SPORTS], "mode": "document"},
                     headers=headers, timeout=TIMEOUT)
    assert bad.status_code == 422 and [e["field"] for e in bad.json()["errors"]] == ["mode"]
    passage = pb_grpc.ModelServingStub(service.channel).Embed(
        pb.EmbedRequest(texts=[SPORTS], mode=pb.EMBED_MODE_PASSAGE), timeout=TIMEOUT)
    assert passage.version == "passage/2x256/mean" and len(passage.embeddings[0].vector) == 4 * 384


def test_sigterm_stops_gracefully(service: Service) -> None:
    """Last in this module: the process ends with status 0 on SIGTERM."""
    assert _stop(service) == 0, service.output()
    assert "model-serving stopped" in service.output()


def test_corrupted_artifact_is_never_served(tmp_path: Path, key_dir: Path) -> None:
    """Served without a registry (DOCTAG_MODEL_DIR alone), a changed byte keeps the service not ready."""
    model_dir = tmp_path / "doctag-tagger"
    shutil.copytree(DEFAULT_MODEL_DIR, model_dir)
    weights = model_dir / "head.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 3] ^= 0xFF
    weights.write_bytes(bytes(data))
    svc = _start(tmp_path, key_dir, model_dir, {"DOCTAG_MODEL_REGISTRY": "false"})
    try:
        deadline = time.monotonic() + 120
        while "model could not be loaded" not in svc.output():
            assert svc.process.poll() is None, svc.output()
            assert time.monotonic() < deadline, svc.output()
            time.sleep(0.3)
        assert _health(svc, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
        ready = httpx.get(f"{svc.http}/readyz", timeout=TIMEOUT)
        assert ready.status_code == 503 and "head.safetensors" in ready.text
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.ModelServingStub(svc.channel).Predict(pb.PredictRequest(text=SPORTS), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not pb_grpc.ModelServingStub(svc.channel).ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    finally:
        assert _stop(svc) == 0
