"""model-serving and its registry when the database or the model store are not what they should be.

- The database is down when model-serving starts: it serves DOCTAG_MODEL_DIR, says so in
  /readyz, answers the registry API with 503, and once the database answers it connects by
  itself (no restart): ready, registry API working, `production` served, inference log written.
  The outage is a TCP proxy on loopback that refuses (port closed) and then forwards to PostgreSQL.
- The store lost a registered version's files: the shipped one is restored from DOCTAG_MODEL_DIR
  at start-up; any other is named, with its path, in the log and in /readyz.

This module migrates its own database: the start-up store check looks at every registered
version, and the session database holds other tests' versions in other stores.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from services.common.settings import CommonSettings
from services.model_serving.archive import remove_tree
from services.model_serving.http_api import build_app
from services.model_serving.models.manifest import read_verified_manifest
from services.model_serving.registry import RegistryConnection, RegistrySettings, RegistryUnavailable
from services.model_serving.runner import ModelRunner
from services.model_serving.settings import ModelServingSettings
from tests.conftest import DB_ADMIN, DB_HOST, DB_PORT
from tests.model_artifacts import make_tiny_bert
from tests.support import sync_channel

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEADLINE = "코스피 2,600선 회복…외국인 순매수"


@pytest.fixture(scope="module")
def own_db() -> Iterator[str]:
    """A database of this module alone, migrated like the session's; dropped afterwards."""
    from services.common.migrate import upgrade

    name = f"doctag_test_conn_{uuid.uuid4().hex[:10]}"
    upgrade(CommonSettings(db_host=DB_HOST, db_port=DB_PORT, db_name=name), user=DB_ADMIN)
    yield name
    with psycopg.connect(host=DB_HOST, port=DB_PORT, user=DB_ADMIN, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model store of every test here: one store per database, as in a deployment."""
    return tmp_path_factory.mktemp("model-store")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackProxy:
    """A TCP port on loopback that refuses connections (nothing listens) until `up()`, then forwards
    each one to PostgreSQL; `down()` closes the port and every forwarded connection."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection((DB_HOST, DB_PORT))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@dataclass
class Serving:
    process: subprocess.Popen[bytes]
    http: str
    grpc_target: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]

    def readyz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.http}/readyz", timeout=10)
        except httpx.TransportError:
            return None

    def grpc_health(self) -> int | None:
        with sync_channel(self.grpc_target, "tagging-worker", "model-serving") as channel:
            try:
                return health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="doctag.v1.ModelServing"), timeout=5).status
            except grpc.RpcError:
                return None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _serve(tmp: Path, env: dict[str, str]) -> Serving:
    http_port, grpc_port = _free_port(), _free_port()
    log = tmp / "model-serving.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.model_serving"], cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "DOCTAG_HTTP_PORT": str(http_port),
                 "DOCTAG_GRPC_PORT": str(grpc_port), "DOCTAG_STATE_DIR": str(tmp / "var"),
                 "DOCTAG_TORCH_THREADS": "1", "DOCTAG_INFERENCE_THREADS": "1", **env})
    return Serving(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)


def _wait(what: str, condition, svc: Serving, timeout_s: float = 120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if svc.process.poll() is not None:
            pytest.fail(f"model-serving exited with {svc.process.returncode}:\n{svc.output()}")
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout_s} s:\n{svc.output()}")


def test_database_down_at_start_then_up_connects_without_a_restart(
        own_db: str, store: Path, tmp_path: Path, key_dir: Path, make_token) -> None:  # type: ignore[no-untyped-def]
    name = f"conn-{uuid.uuid4().hex[:8]}"
    shipped = make_tiny_bert(tmp_path / "shipped", name=name, version="build-1", seed=1)
    proxy = LoopbackProxy()
    svc = _serve(tmp_path, {
        "DOCTAG_MODEL_DIR": str(shipped), "DOCTAG_MODEL_REGISTRY": "true", "DOCTAG_DB_HOST": "127.0.0.1",
        "DOCTAG_DB_PORT": str(proxy.port), "DOCTAG_DB_NAME": own_db, "DOCTAG_MODEL_STORE": str(store),
        "DOCTAG_REGISTRY_RETRY_MAX_S": "0.5", "DOCTAG_INFERENCE_LOG_FLUSH_S": "0.2",
        "DOCTAG_JWT_PUBLIC_KEY_FILE": str(key_dir / "jwt_public.pem")})
    user = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()))}"}
    admin = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()), roles=('platform_admin',))}"}
    tenant = str(uuid.uuid4())

    def predict(model: str | None = None) -> httpx.Response:
        body = {"text": HEADLINE, **({"model": model} if model else {})}
        return httpx.post(f"{svc.http}/api/v1/predict", json=body, headers=user, timeout=30)

    try:
        # Down: the shipped artifact serves, but /readyz says the registry is missing and why.
        ready = _wait("the default model loading",
                      lambda: (r := svc.readyz()) is not None and r.json()["checks"]["model"] == "ok" and r, svc)
        assert ready.status_code == 503, ready.text
        reason = ready.json()["checks"]["registry"]
        assert "not connected to the registry's database" in reason and "refused" in reason.lower(), reason
        assert svc.grpc_health() == health_pb2.HealthCheckResponse.SERVING, "inference works from DOCTAG_MODEL_DIR"
        served = predict()
        assert (served.status_code, served.json()["version"]) == (200, "build-1"), served.text
        named = predict(f"{name}:1")
        assert named.status_code == 503 and "not connected" in named.json()["detail"], named.text
        listed = httpx.get(f"{svc.http}/api/v1/models", headers=admin, timeout=10)
        assert listed.status_code == 503, listed.text
        assert listed.headers["content-type"].startswith("application/problem+json")
        assert listed.headers["retry-after"] and "not connected" in listed.json()["detail"]
        assert httpx.get(f"{svc.http}/api/v1/models", timeout=10).status_code == 401, "auth still comes first"
        assert "model registry not connected" in svc.output()

        # Up: connected by itself, ready, the registry API answers, production (version 1) is served.
        proxy.up()
        ready = _wait("readiness", lambda: (r := svc.readyz()) is not None and r.status_code == 200 and r, svc, 60)
        assert ready.json()["checks"] == {"model": "ok", "registry": "ok"}
        listed = httpx.get(f"{svc.http}/api/v1/models", headers=admin, timeout=10)
        assert listed.status_code == 200, listed.text
        assert next(m for m in listed.json()["models"] if m["name"] == name)["aliases"] == {"production": 1}
        _wait("production served", lambda: predict().json().get("version") == "1", svc, 60)
        assert predict(f"{name}:1").status_code == 200
        assert httpx.post(f"{svc.http}/api/v1/predict", json={"text": HEADLINE}, timeout=30, headers={
            "Authorization": f"Bearer {make_token(tenant)}"}).status_code == 200

        def logged() -> bool:
            with psycopg.connect(host=DB_HOST, port=DB_PORT, user=DB_ADMIN, dbname=own_db) as conn:
                return conn.execute("SELECT count(*) FROM models.inference_log WHERE tenant_id = %s",
                                    (tenant,)).fetchone() == (1,)
        _wait("the inference log row", logged, svc, 30)

        # Down again: still serving, /readyz says so.
        proxy.down()
        ready = _wait("not ready", lambda: (r := svc.readyz()) is not None and r.status_code == 503 and r, svc, 60)
        assert ready.json()["checks"]["model"] == "ok" and ready.json()["checks"]["registry"] != "ok"
        assert predict().status_code == 200
    finally:
        proxy.down()
        assert svc.stop() == 0, svc.output()


# -- the model store at start-up (in process) ----------------------------------------------------


def _settings(own_db: str, store: Path) -> RegistrySettings:
    return RegistrySettings(db_name=own_db, db_host=DB_HOST, db_port=DB_PORT, model_store=store,
                            registry_retry_max_s=0.2)


async def test_start_up_restores_the_shipped_version_and_names_any_other_missing_one(
        own_db: str, store: Path, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    name = f"store-{uuid.uuid4().hex[:8]}"
    shipped = make_tiny_bert(tmp_path / "shipped", name=name, version="build-1", seed=1)
    other = make_tiny_bert(tmp_path / "other", name=name, version="build-2", seed=2)
    first = RegistryConnection(shipped, _settings(own_db, store))
    await first.start()
    try:
        assert first.connected
        await first.registry.register(name, other, created_by="test")
        await first.registry.set_alias(name, "candidate", 2, by="test")
    finally:
        await first.close()
    remove_tree(store / name / "1")   # the store lost both copies; the registry still lists them
    remove_tree(store / name / "2")

    connection = RegistryConnection(shipped, _settings(own_db, store))
    with caplog.at_level("INFO", logger="services.model_serving.registry"):
        await connection.start()
    runner = ModelRunner(ModelServingSettings(model_dir=shipped, model_refresh_s=3600, inference_threads=1),
                         resolver=connection.resolve, inference_log=connection.inference_log)
    app = build_app(runner.settings, runner, readiness={"registry": connection.ready_check})
    try:
        assert read_verified_manifest(store / name / "1")[0]["version"] == "build-1", "restored from MODEL_DIR"
        await runner.load()
        assert runner.info is not None and runner.info.version == "1"

        missing = store / name / "2"
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert [(r.model, r.version, r.path) for r in errors] == [(name, "2", str(missing))]
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ms") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["model"] == "ok"
            assert ready.json()["checks"]["registry"] == (
                f"unavailable: StoreProblem: model {name} version 2 in {missing}: the directory is missing")

            await connection.registry.register(name, other, created_by="ops")   # the same artifact restores it
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
    finally:
        await runner.aclose()
        await connection.close()


async def test_before_the_connection_only_the_default_model_is_known(
        own_db: str, store: Path, tmp_path: Path) -> None:
    name = f"early-{uuid.uuid4().hex[:8]}"
    shipped = make_tiny_bert(tmp_path / "shipped", name=name, version="build-1", seed=1)
    proxy = LoopbackProxy()
    settings = _settings(own_db, store).model_copy(update={"db_port": proxy.port})
    connection = RegistryConnection(shipped, settings)
    connected = threading.Event()
    connection.on_connected = connected.set
    try:
        await connection.start()
        assert not connection.connected
        assert (await connection.resolve(None)).directory == shipped.resolve()
        with pytest.raises(RegistryUnavailable, match="not connected yet"):
            await connection.resolve(f"{name}:1")
        with pytest.raises(RegistryUnavailable, match="not connected"):
            connection.current()
        with pytest.raises(RegistryUnavailable, match="refused"):
            await connection.ready_check()
        proxy.up()
        for _ in range(200):
            if connected.is_set():
                break
            await asyncio.sleep(0.05)
        assert connection.connected and connected.is_set()
        await connection.ready_check()
        assert (await connection.resolve(None)).version == "1"
    finally:
        await connection.close()
        proxy.down()
