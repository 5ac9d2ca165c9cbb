"""model-serving as a real process under load: overload answered at once (gRPC RESOURCE_EXHAUSTED /
HTTP 503 + Retry-After), deadlines (HTTP 504), and a switch of the default model under concurrent
gRPC + HTTP load without a failed request. Served without a registry (the static resolver follows
a repointed DOCTAG_MODEL_DIR symlink); the models are tiny random-weight BERTs."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from services.common.pb import model_serving_pb2 as pb
from services.common.pb import model_serving_pb2_grpc as pb_grpc
from tests.integration.test_model_serving import (
    Service,
    _start,
    _stop,
    _wait_for_health,
)
from tests.model_artifacts import make_tiny_bert

pytestmark = pytest.mark.integration

LONG = "정부는 내년도 예산안을 국회에 제출했다. 여야는 추경 처리를 두고 맞섰다. " * 120
TIMEOUT = 30


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls `predicate` until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)  # poll interval


def _serve(tmp: Path, key_dir: Path, model_dir: Path, **env: str) -> Service:
    svc = _start(tmp, key_dir, model_dir, {"DOCTAG_MODEL_REGISTRY": "false", **env})
    _wait_for_health(svc, health_pb2.HealthCheckResponse.SERVING)
    return svc


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {v: make_tiny_bert(root / f"v{v}", name="tiny", version=v, seed=int(v)) for v in ("1", "2")}


@pytest.fixture()
def auth(make_token) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {make_token('00000000-0000-0000-0000-000000000001')}"}


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, versions: dict[str, Path]) -> Iterator[Service]:
    """One inference thread, one window per forward pass, at most 2 queued windows."""
    svc = _serve(tmp_path_factory.mktemp("overload"), key_dir, versions["1"], DOCTAG_INFERENCE_THREADS="1",
                 DOCTAG_BATCH_MAX_WINDOWS="1", DOCTAG_QUEUE_MAX_WINDOWS="2", DOCTAG_MAX_WINDOWS="64")
    try:
        yield svc
    finally:
        _stop(svc)


def test_overload_is_refused_at_once_over_grpc(overloaded: Service) -> None:
    stub = pb_grpc.ModelServingStub(overloaded.channel)
    calls = [stub.Predict.future(pb.PredictRequest(text=LONG), timeout=TIMEOUT) for _ in range(12)]
    ok, refused = 0, []
    for call in calls:
        try:
            call.result()
            ok += 1
        except grpc.RpcError as exc:
            refused.append(exc)
    assert ok >= 1 and refused, "the first request runs, the ones behind a full queue are refused"
    for exc in refused:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        trailing = dict(exc.trailing_metadata() or ())
        assert int(trailing["retry-after-ms"]) > 0 and int(trailing["retry-after"]) >= 1


def test_overload_is_503_with_retry_after_over_http(overloaded: Service, auth: dict[str, str]) -> None:
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: httpx.post(f"{overloaded.http}/api/v1/predict", json={"text": LONG},
                                                       headers=auth, timeout=TIMEOUT), range(12)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
    for response in responses:
        if response.status_code == 503:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["Retry-After"]) >= 1
            assert "overloaded" in response.json()["detail"]


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory, key_dir: Path, versions: dict[str, Path]) -> Iterator[Service]:
    """Serves DOCTAG_MODEL_DIR=<tmp>/current, a symlink to tiny v1, re-resolved every 0.2 s; batches wait
    up to 300 ms for more windows."""
    tmp = tmp_path_factory.mktemp("switch")
    (tmp / "current").symlink_to(versions["1"])
    svc = _serve(tmp, key_dir, tmp / "current", DOCTAG_MODEL_REFRESH_S="0.2", DOCTAG_BATCH_MAX_DELAY_MS="300",
                 DOCTAG_INFERENCE_THREADS="1")
    try:
        yield svc
    finally:
        assert _stop(svc) == 0, svc.output()


def _deadline_count(svc: Service) -> float:
    for line in httpx.get(f"{svc.http}/metrics", timeout=TIMEOUT).text.splitlines():
        if line.startswith("doctag_inference_deadline_exceeded_total "):
            return float(line.split()[1])
    raise AssertionError("deadline counter missing")


def test_deadlines_are_honoured(roomy: Service, auth: dict[str, str]) -> None:
    """A lone window waits up to DOCTAG_BATCH_MAX_DELAY_MS (300) for company: a 50 ms deadline passes first."""
    stub = pb_grpc.ModelServingStub(roomy.channel)
    before = _deadline_count(roomy)
    response = httpx.post(f"{roomy.http}/api/v1/predict", json={"text": "코스피 급락"},
                          headers={**auth, "X-Request-Timeout-Ms": "50"}, timeout=TIMEOUT)
    assert response.status_code == 504, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(pb.PredictRequest(text="코스피 급락"), timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _deadline_count(roomy) >= before + 1, "the server dropped the expired requests itself"
    patient = httpx.post(f"{roomy.http}/api/v1/predict", json={"text": "코스피 급락"},
                         headers={**auth, "X-Request-Timeout-Ms": "5000"}, timeout=TIMEOUT)
    assert patient.status_code == 200, patient.text
    bad = httpx.post(f"{roomy.http}/api/v1/predict", json={"text": "코스피"},
                     headers={**auth, "X-Request-Timeout-Ms": "soon"}, timeout=TIMEOUT)
    assert bad.status_code == 422


def test_default_model_switch_under_load_fails_no_request(roomy: Service, versions: dict[str, Path],
                                                          auth: dict[str, str]) -> None:
    svc = roomy
    current = Path(svc.log).parent / "current"
    stub = pb_grpc.ModelServingStub(svc.channel)
    stop = threading.Event()
    seen: list[str] = []
    latest: dict[str, str] = {}   # client -> version of its latest answer
    errors: list[str] = []

    def grpc_client(i: int) -> None:
        while not stop.is_set():
            try:
                version = stub.Predict(pb.PredictRequest(text=f"손흥민 {i}호 골 " * (1 + i)), timeout=TIMEOUT).version
                seen.append(version)
                latest[f"grpc-{i}"] = version
            except grpc.RpcError as exc:
                errors.append(f"grpc {exc.code()}: {exc.details()}")

    def http_client(i: int) -> None:
        with httpx.Client(timeout=TIMEOUT, headers=auth) as client:
            while not stop.is_set():
                response = client.post(f"{svc.http}/api/v1/predict", json={"texts": ["코스피 급락", LONG[: 200 * i]]})
                if response.status_code != 200:
                    errors.append(f"http {response.status_code}: {response.text}")
                else:
                    seen.append(response.json()["version"])
                    latest[f"http-{i}"] = response.json()["version"]

    threads = [threading.Thread(target=grpc_client, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=http_client, args=(i,)) for i in range(1, 5)]
    try:
        assert stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models[0].version == "1"
        for thread in threads:
            thread.start()
        wait_until(lambda: len(latest) == len(threads) and set(latest.values()) == {"1"},
                   "every client to be answered by version 1")
        switched = current.parent / "next"
        switched.symlink_to(versions["2"])
        switched.replace(current)          # an atomic repoint, as a deployment would do
        # The load goes on until every client has crossed the switch (its latest answer is from v2).
        wait_until(lambda: set(latest.values()) == {"2"}, "every client to be answered by version 2")
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not errors, errors[:5]
        assert seen[-1] == "2", svc.output()
        explicit = stub.Predict(pb.PredictRequest(text="국회", model="tiny:2"), timeout=TIMEOUT)
        assert explicit.version == "2"
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(pb.PredictRequest(text="국회", model="tiny:9"), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        models = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
        assert {(m.version, m.default) for m in models} >= {("2", True)}
    finally:
        stop.set()
