"""The services' HTTPS ports check the client certificate's role (HTTP_ACCESS), not only that it
chains to the platform CA: a real upload replica served as `services.common.runner` serves it
(mutual TLS, `use_tls`), called over real sockets with certificates of each role."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.common import pki
from services.common.access import HTTP_ACCESS
from services.common.runner import use_tls
from services.common.tls import ReloadingSSLContext, TlsFiles
from services.upload.app import UploadComponents, build_http_app
from services.upload.settings import UploadSettings
from tests.conftest import create_tenant

from .test_gateway_support import free_port

pytestmark = pytest.mark.integration


def files(pki_dir: Path, role: str) -> TlsFiles:
    cert, key = pki.cert_paths(pki_dir, role)
    return TlsFiles(pki_dir / "ca.crt", cert, key)


class TlsServer:
    """`app` on an HTTPS port with the role check, in its own thread and event loop."""

    def __init__(self, app: object, pki_dir: Path, role: str, http: str) -> None:
        self.port = free_port()
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on",
                                     http=http)  # type: ignore[arg-type]
        self.server = uvicorn.Server(self.config)
        self.tls = ReloadingSSLContext(files(pki_dir, role), server=True)
        self.role = role
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        watcher = use_tls(self.config, self.tls, self.role)
        try:
            await self.server.serve()
        finally:
            if watcher is not None:
                watcher.cancel()

    def __enter__(self) -> TlsServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the HTTPS server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def client(pki_dir: Path, role: str) -> httpx.Client:
    return httpx.Client(verify=ReloadingSSLContext(files(pki_dir, role), server=False).context, timeout=30,
                        trust_env=False)


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("http-roles-pki")
    pki.ensure_local(path)
    return path


@pytest.fixture(scope="module", params=["httptools", "h11"])
def upload(request: pytest.FixtureRequest, pki_dir: Path, tmp_path_factory: pytest.TempPathFactory,
           test_db_name: str, key_dir: Path, amqp_prefix: str) -> Iterator[str]:
    """A real upload replica over HTTPS, with uvicorn's httptools and with its h11 protocol."""
    settings = UploadSettings(db_name=test_db_name, amqp_prefix=amqp_prefix,
                              blob_dir=tmp_path_factory.mktemp("http-roles-blobs"),
                              jwt_public_key_file=key_dir / "jwt_public.pem", relay_enabled=False, purge_enabled=False)
    with TlsServer(build_http_app(UploadComponents(settings)), pki_dir, "upload", request.param) as server:
        yield f"https://127.0.0.1:{server.port}"


@pytest.mark.parametrize("role", ["tagging-worker", "search", "model-serving", "web", "upload"])
def test_a_platform_certificate_of_another_role_gets_403_on_uploads_api(upload: str, pki_dir: Path, role: str,
                                                                          make_token, admin_dsn: str) -> None:
    token = make_token(create_tenant(admin_dsn, f"hr-{uuid.uuid4().hex[:8]}"))
    with client(pki_dir, role) as c:
        for method, path, kwargs in [
            ("GET", "/api/v1/documents", {}),
            ("POST", "/api/v1/documents", {"files": {"file": ("문서.txt", "한국어 본문".encode(), "text/plain")}}),
            ("GET", "/api/v1/audit", {}),
            ("GET", "/openapi.json", {}),
        ]:
            r = c.request(method, upload + path, headers={"Authorization": f"Bearer {token}",
                                                           "X-Request-ID": "role-check-1"}, **kwargs)
            assert r.status_code == 403, (role, method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["x-request-id"] == "role-check-1"
            body = r.json()
            assert body["role"] == role and f"role {role} may not call the upload HTTP API" in body["detail"]
            assert "gateway" in body["detail"]
        # Probes and scrapes: open to every platform certificate.
        assert c.get(upload + "/healthz").status_code == 200
        assert c.get(upload + "/metrics").status_code == 200
        assert c.get(upload + "/readyz").status_code in (200, 503)


def test_the_gateways_certificate_reaches_the_api(upload: str, pki_dir: Path, make_token, admin_dsn: str) -> None:
    tenant = create_tenant(admin_dsn, f"hg-{uuid.uuid4().hex[:8]}")
    with client(pki_dir, "gateway") as c:
        assert c.get(upload + "/api/v1/documents").status_code == 401  # past the role check: the token's turn
        r = c.get(upload + "/api/v1/documents", headers={"Authorization": f"Bearer {make_token(tenant)}"})
        assert r.status_code == 200 and r.json()["items"] == []
        assert c.get(upload + "/metrics").status_code == 200
        # Several requests on one kept-alive connection keep its role.
        for _ in range(3):
            assert c.get(upload + "/healthz").status_code == 200


def test_every_https_service_role_has_a_rule() -> None:
    # prometheus only scrapes (a client certificate); the gateway's rule is its status listener's.
    assert set(HTTP_ACCESS) == set(pki.SERVICE_ROLES) - {"prometheus"}
    assert {role for role, rule in HTTP_ACCESS.items() if rule.api} == {"upload", "search", "web", "model-serving"}
    assert all(rule.api <= {"gateway"} for rule in HTTP_ACCESS.values())


def test_the_scrapers_certificate_reads_metrics_but_not_the_api(upload: str, pki_dir: Path) -> None:
    with client(pki_dir, "prometheus") as c:
        assert c.get(upload + "/metrics").status_code == 200
        refused = c.get(upload + "/api/v1/documents")
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")
