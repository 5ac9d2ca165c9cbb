"""An attacker on the platform's network, against the running stack (the processes `make up` starts).

Table-driven: every gRPC method of every service is called from a client without a certificate,
over plaintext, with a certificate from another CA, with a certificate of our CA that names no
platform role, with a valid certificate of each role the method is not for, and with the right
role but forged, replayed or expired credentials (job capabilities for the tagging pipeline, end
users' tokens for calls on their behalf). Every cell must be refused with the expected status, and
after each attempt the victim documents (one still `queued`, one `tagged`) must be exactly as they
were: status, error, text, tags, personal-data counts. A control call with proper credentials
shows that the refusals come from the attack, not from a broken set-up.
"""
from __future__ import annotations

import hashlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import admin
from services.cli.stack import StackLayout
from services.common import capability, pki
from services.common.access import ACCESS, ANY_PLATFORM_ROLE, CAPABILITY_KEY
from services.common.auth import ensure_keypair, sign_token
from services.common.blobstore import BlobStore
from services.common.pb import (
    documents_pb2,
    documents_pb2_grpc,
    model_serving_pb2,
    model_serving_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from services.common.tls import TlsFiles, channel_credentials

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0
OTHER_SHA = "f" * 64
TEXT = "정부는 내년 예산을 12조 원 늘리기로 했다. 공격자가 읽어서는 안 되는 문서다.\n".encode()


@dataclass(frozen=True)
class Victims:
    tenant: str          # tenant A: owns the victims
    other_tenant: str    # tenant B: the attacker's own department
    queued: str          # a document waiting for its job (no job will come: inserted without one)
    queued_sha: str
    tagged: str          # a document the platform tagged


@dataclass(frozen=True)
class Keys:
    pki_dir: Path
    foreign_dir: Path    # another CA with a tagging-worker certificate
    intruder_dir: Path   # our CA, role "intruder" (in no rule)
    jwt_private: Path
    foreign_jwt_private: Path
    cap_private: Path


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def keys(stack: StackLayout, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    foreign = tmp_path_factory.mktemp("foreign-ca")
    pki.init_ca(foreign, common_name="not the doctag CA")
    pki.issue(foreign, "tagging-worker")
    intruder = tmp_path_factory.mktemp("intruder")
    pki.issue(stack.pki_dir, "intruder", out_dir=intruder)
    foreign_jwt = tmp_path_factory.mktemp("foreign-jwt")
    ensure_keypair(foreign_jwt)
    return Keys(stack.pki_dir, foreign, intruder, stack.state_dir / "keys" / "jwt_private.pem",
                foreign_jwt / "jwt_private.pem", stack.state_dir / "keys" / capability.PRIVATE_NAME)


@pytest.fixture(scope="module")
def victims(stack: StackLayout, admin_dsn: str) -> Victims:
    # Departments of their own (the other end-to-end tests count their departments' quota).
    for slug, name in (("e2e-victim", "피해부서"), ("e2e-mallory", "공격부서")):
        admin.create_tenant(admin_dsn, slug, name, 50 * 1024 * 1024)
        admin.create_user(admin_dsn, slug, "user1", "correct horse battery", "user")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        tenant, other = (str(conn.execute("SELECT id FROM identity.tenants WHERE slug = %s", (slug,))
                             .fetchone()[0]) for slug in ("e2e-victim", "e2e-mallory"))  # type: ignore[index]
    # A queued document: its row and bytes, no outbox row, so no job will ever be published for it.
    queued, sha = str(uuid.uuid4()), hashlib.sha256(TEXT).hexdigest()
    blob = BlobStore(stack.state_dir / "blobs").path(tenant, sha)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(TEXT)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO documents.documents (id, tenant_id, title, filename, content_type, size_bytes, "
                     "sha256, status) VALUES (%s, %s, '예산 기밀', 'secret.txt', 'text/plain', %s, %s, 'queued')",
                     (queued, tenant, len(TEXT), sha))
    # A tagged document, through the gateway and the real pipeline.
    with httpx.Client(base_url=stack.gateway_url, timeout=60) as client:
        token = client.post("/api/v1/auth/token", json={"tenant": "e2e-victim", "username": "user1",
                                                        "password": "correct horse battery"})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        body = "2027년 예산안 보도자료. 경제 성장률 전망.".encode()
        up = client.post("/api/v1/documents", headers=headers, files={"file": ("victim.txt", body, "text/plain")})
        assert up.status_code in (200, 202), up.text
        tagged = up.json()["id"]
        deadline = time.monotonic() + 180
        while client.get(f"/api/v1/documents/{tagged}", headers=headers).json()["status"] != "tagged":
            assert time.monotonic() < deadline, "the victim document was not tagged"
            time.sleep(0.5)
    return Victims(tenant, other, queued, sha, tagged)


def snapshot(admin_dsn: str, document_id: str) -> tuple[Any, ...]:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT status, error, text_content, pii, updated_at, processed_at "
                           "FROM documents.documents WHERE id = %s", (document_id,)).fetchone()
        tags = conn.execute("SELECT tag, score, model_version FROM documents.document_tags WHERE document_id = %s "
                            "ORDER BY tag", (document_id,)).fetchall()
    return (row, tags)


# ------------------------------------------------------------------ credentials


def _files(directory: Path, role: str) -> TlsFiles:
    return TlsFiles(directory / "ca.crt", directory / f"{role}.crt", directory / f"{role}.key")


def _channel(target: str, server_role: str, how: str, keys: Keys, role: str = "") -> grpc.aio.Channel:
    options = [("grpc.ssl_target_name_override", pki.role_dns_name(server_role))]
    if how == "plaintext":
        return grpc.aio.insecure_channel(target)
    if how == "no-certificate":
        creds = grpc.ssl_channel_credentials(root_certificates=(keys.pki_dir / "ca.crt").read_bytes())
        return grpc.aio.secure_channel(target, creds, options=options)
    if how == "other-ca":
        # Our CA as trust root (the attacker knows it), but its own certificate from another CA.
        foreign = _files(keys.foreign_dir, "tagging-worker")
        creds = grpc.ssl_channel_credentials(root_certificates=(keys.pki_dir / "ca.crt").read_bytes(),
                                             private_key=foreign.key.read_bytes(),
                                             certificate_chain=foreign.cert.read_bytes())
        return grpc.aio.secure_channel(target, creds, options=options)
    if how == "intruder":
        return grpc.aio.secure_channel(target, channel_credentials(_files(keys.intruder_dir, "intruder")),
                                       options=options)
    return grpc.aio.secure_channel(target, channel_credentials(_files(keys.pki_dir, role)), options=options)


def _capability(keys: Keys, document_id: str, tenant_id: str, sha: str, *, ttl: int = 600,
                now: int | None = None) -> str:
    return capability.CapabilitySigner(keys.cap_private, ttl).sign(document_id, tenant_id, sha, now=now)


def _forged_capability(document_id: str, tenant_id: str, sha: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    now = int(time.time())
    return jwt.encode({"iss": capability.ISSUER, "aud": capability.AUDIENCE, "sub": document_id, "tenant": tenant_id,
                       "sha256": sha, "iat": now, "exp": now + 600}, key, algorithm="EdDSA")


def _user_token(private: Path, tenant_id: str, ttl: int = 600, now: int | None = None) -> str:
    return sign_token(private_key_file=private, user_id=str(uuid.uuid4()), tenant_id=tenant_id, tenant_slug="x",
                      username="mallory", roles=["platform_admin"], issuer="doctag", audience="doctag-api",
                      ttl_seconds=ttl, now=now)


# ------------------------------------------------------------------ the calls


@dataclass(frozen=True)
class Call:
    """One gRPC method with the request an attacker would send (against the victims)."""

    service: str          # the server's role
    method: str           # full method name, as in services/common/access.py
    invoke: Callable[[grpc.aio.Channel, Victims, tuple[tuple[str, str], ...]], Any]


async def _read(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    stub = documents_pb2_grpc.DocumentsStub(channel)
    return [c async for c in stub.ReadContent(documents_pb2.ReadContentRequest(
        tenant_id=v.tenant, document_id=v.queued), timeout=TIMEOUT, metadata=meta)]


async def _record(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...],
                  document_id: str | None = None, sha: str | None = None) -> Any:
    stub = documents_pb2_grpc.DocumentsStub(channel)
    return await stub.RecordTaggingResult(documents_pb2.RecordTaggingResultRequest(
        tenant_id=v.tenant, document_id=document_id or v.queued, content_sha256=sha or v.queued_sha,
        outcome=documents_pb2.TAGGING_OUTCOME_TAGGED, text="attacker text",
        tags=[documents_pb2.Tag(tag="attacker-tag", score=1.0, model_version="666")]), timeout=TIMEOUT, metadata=meta)


async def _get(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await documents_pb2_grpc.DocumentsStub(channel).GetDocument(
        documents_pb2.GetDocumentRequest(tenant_id=v.tenant, document_id=v.tagged), timeout=TIMEOUT, metadata=meta)


async def _search(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await search_pb2_grpc.SearchStub(channel).Search(
        search_pb2.SearchRequest(tenant_id=v.tenant, query="예산"), timeout=TIMEOUT, metadata=meta)


async def _predict(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await model_serving_pb2_grpc.ModelServingStub(channel).Predict(
        model_serving_pb2.PredictRequest(text="예산", tenant_id=v.tenant), timeout=30, metadata=meta)


async def _predict_batch(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await model_serving_pb2_grpc.ModelServingStub(channel).PredictBatch(
        model_serving_pb2.PredictBatchRequest(texts=["예산"], tenant_id=v.tenant), timeout=30, metadata=meta)


async def _embed(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await model_serving_pb2_grpc.ModelServingStub(channel).Embed(
        model_serving_pb2.EmbedRequest(texts=["예산"], mode=model_serving_pb2.EMBED_MODE_PASSAGE, tenant_id=v.tenant),
        timeout=60, metadata=meta)


async def _list_models(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await model_serving_pb2_grpc.ModelServingStub(channel).ListModels(
        model_serving_pb2.ListModelsRequest(), timeout=TIMEOUT, metadata=meta)


async def _health(channel: grpc.aio.Channel, v: Victims, meta: tuple[tuple[str, str], ...]) -> Any:
    return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT,
                                                           metadata=meta)


CALLS = [
    Call("upload", "/doctag.v1.Documents/ReadContent", _read),
    Call("upload", "/doctag.v1.Documents/RecordTaggingResult", _record),
    Call("upload", "/doctag.v1.Documents/GetDocument", _get),
    Call("search", "/doctag.v1.Search/Search", _search),
    Call("model-serving", "/doctag.v1.ModelServing/Predict", _predict),
    Call("model-serving", "/doctag.v1.ModelServing/PredictBatch", _predict_batch),
    Call("model-serving", "/doctag.v1.ModelServing/ListModels", _list_models),
    Call("model-serving", "/doctag.v1.ModelServing/Embed", _embed),
    *(Call(role, "/grpc.health.v1.Health/Check", _health) for role in ("upload", "search", "model-serving")),
]


def test_the_table_covers_every_method() -> None:
    """Every method a server serves is in ACCESS and in CALLS (a new method must join both)."""
    served = {f"/{s.full_name}/{m.name}" for pb in (documents_pb2, search_pb2, model_serving_pb2)
              for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert served <= set(ACCESS)
    assert served | {"/grpc.health.v1.Health/Check"} == {c.method for c in CALLS}


def _target(stack: StackLayout, role: str) -> str:
    port = {"upload": stack.upload_ports[0][1], "search": stack.search_ports[0][1],
            "model-serving": stack.model_ports[1]}[role]
    return f"{stack.host}:{port}"


def _good_credentials(call: Call, v: Victims, keys: Keys) -> tuple[tuple[str, str], ...]:
    """What a legitimate caller would bring: a capability for the victim or the victim tenant's user token."""
    rule = ACCESS[call.method]
    if rule.job_capability:
        return ((CAPABILITY_KEY, _capability(keys, v.queued, v.tenant, v.queued_sha)),)
    if rule.user_token:
        return (("authorization", f"Bearer {_user_token(keys.jwt_private, v.tenant)}"),)
    return ()


@dataclass(frozen=True)
class Cell:
    call: Call
    attacker: str                    # how the client connects: plaintext, no-certificate, other-ca, intruder, role
    role: str = ""
    credentials: str = "good"        # good, or the name of a forged/replayed credential (see _credentials)
    expected: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED

    @property
    def id(self) -> str:
        who = self.role if self.attacker == "role" else self.attacker
        return f"{self.call.service}:{self.call.method.rsplit('/', 1)[-1]}:{who}:{self.credentials}"


def _credentials(cell: Cell, v: Victims, keys: Keys) -> tuple[tuple[str, str], ...]:
    now = int(time.time())
    cap = {
        "no-capability": None,
        "forged-capability": _forged_capability(v.queued, v.tenant, v.queued_sha),
        "capability-of-another-document": _capability(keys, v.tagged, v.tenant, v.queued_sha),
        "capability-of-another-tenant": _capability(keys, v.queued, v.other_tenant, v.queued_sha),
        "capability-of-another-version": _capability(keys, v.queued, v.tenant, OTHER_SHA),
        "expired-capability": _capability(keys, v.queued, v.tenant, v.queued_sha, ttl=60, now=now - 3600),
    }
    token = {
        "no-user-token": None,
        "token-of-another-tenant": _user_token(keys.jwt_private, v.other_tenant),
        "token-signed-by-another-key": _user_token(keys.foreign_jwt_private, v.tenant),
        "expired-user-token": _user_token(keys.jwt_private, v.tenant, ttl=60, now=now - 3600),
    }
    if cell.credentials == "good":
        return _good_credentials(cell.call, v, keys)
    if cell.credentials in cap:
        value = cap[cell.credentials]
        return ((CAPABILITY_KEY, value),) if value else ()
    value = token[cell.credentials]
    return (("authorization", f"Bearer {value}"),) if value else ()


def _cells() -> Iterator[Cell]:
    for call in CALLS:
        # No usable identity: the TLS handshake fails, nothing reaches a handler.
        for how in ("plaintext", "no-certificate", "other-ca"):
            yield Cell(call, how, expected=grpc.StatusCode.UNAVAILABLE)
        yield Cell(call, "intruder")
        for role in sorted(ANY_PLATFORM_ROLE - ACCESS[call.method].roles):
            yield Cell(call, "role", role)
    read, record = CALLS[0], CALLS[1]
    for call in (read, record):
        for forged in ("no-capability", "forged-capability", "capability-of-another-document",
                       "capability-of-another-tenant", "expired-capability"):
            yield Cell(call, "role", "tagging-worker", forged)
    # A capability of another content version: upload refuses to read content the job was not for,
    # and a result for a version that is not the document's.
    yield Cell(read, "role", "tagging-worker", "capability-of-another-version",
               expected=grpc.StatusCode.FAILED_PRECONDITION)
    yield Cell(record, "role", "tagging-worker", "capability-of-another-version")
    for call in (CALLS[2], CALLS[3]):
        for forged in ("no-user-token", "token-of-another-tenant", "token-signed-by-another-key",
                       "expired-user-token"):
            yield Cell(call, "role", "gateway", forged)
    for call in (*CALLS[4:6], next(c for c in CALLS if c.method.endswith("/Embed"))):
        yield Cell(call, "role", "tagging-worker", "forged-capability")


CELLS = list(_cells())


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
async def test_attacker_is_refused(cell: Cell, stack: StackLayout, victims: Victims, keys: Keys,
                                   admin_dsn: str) -> None:
    before = [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)]
    channel = _channel(_target(stack, cell.call.service), cell.call.service, cell.attacker, keys, cell.role)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cell.call.invoke(channel, victims, _credentials(cell, victims, keys))
    finally:
        await channel.close()
    assert err.value.code() == cell.expected, err.value.details()
    assert [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)] == before


async def test_the_same_calls_with_proper_credentials_work(stack: StackLayout, victims: Victims, keys: Keys,
                                                          admin_dsn: str) -> None:
    """The control: each read-only method answers its legitimate caller (so the refusals above are
    the attack's, not a broken set-up), and still changes nothing."""
    before = [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)]
    for call in CALLS:
        if call.method.endswith("RecordTaggingResult"):
            continue  # it would change the victim: the e2e flow shows the worker recording results
        role = sorted(ACCESS[call.method].roles)[0]
        if call.method.endswith(("Predict", "PredictBatch", "ListModels", "ReadContent")):
            role = "tagging-worker"
        channel = _channel(_target(stack, call.service), call.service, "role", keys, role)
        try:
            answer = await call.invoke(channel, victims, _good_credentials(call, victims, keys))
        finally:
            await channel.close()
        assert answer is not None, call.method
        if call.method.endswith("ReadContent"):
            assert b"".join(c.data for c in answer) == TEXT
    assert [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)] == before


def test_refusals_are_counted(stack: StackLayout, victims: Victims) -> None:
    """upload's /metrics (on its own port, never through the gateway) counts the refused calls."""
    with stack.client(timeout=10) as client:
        metrics = client.get(f"https://{stack.host}:{stack.upload_ports[0][0]}/metrics").text
    denied = [line for line in metrics.splitlines() if line.startswith("doctag_grpc_denied_total{")]
    assert any('reason="capability"' in line for line in denied), denied
    assert any('reason="role"' in line for line in denied), denied


# ------------------------------------------------------------------ the services' HTTP ports, directly


def _http_ports(stack: StackLayout) -> dict[str, int]:
    return {"upload": stack.upload_ports[0][0], "search": stack.search_ports[0][0], "model-serving":
            stack.model_ports[0], "tagging-worker": stack.worker_ports[0]}


def _https(stack: StackLayout, service: str, path: str = "") -> str:
    return f"https://{stack.host}:{_http_ports(stack)[service]}{path}"


def _tls_client(keys: Keys, how: str) -> httpx.Client:
    """A client that trusts the platform CA and presents no certificate, or one of another CA."""
    context = ssl.create_default_context(cafile=str(keys.pki_dir / "ca.crt"))
    if how == "other-ca":
        foreign = _files(keys.foreign_dir, "tagging-worker")
        context.load_cert_chain(foreign.cert, foreign.key)
    return httpx.Client(verify=context, timeout=10)


@pytest.mark.parametrize("how", ["plaintext", "no-certificate", "other-ca"])
@pytest.mark.parametrize("service", ["upload", "search", "model-serving", "tagging-worker"])
def test_service_http_ports_refuse_hosts_without_a_platform_certificate(stack: StackLayout, victims: Victims,
                                                                        keys: Keys, admin_dsn: str, how: str,
                                                                        service: str) -> None:
    """Without a certificate of the platform CA nothing is answered, not even /metrics or /readyz,
    and nothing changes, even with a valid user token."""
    before = [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)]
    headers = {"Authorization": f"Bearer {_user_token(keys.jwt_private, victims.tenant)}"}
    for path in ("/metrics", "/readyz", f"/api/v1/documents/{victims.tagged}"):
        with pytest.raises(httpx.TransportError):
            if how == "plaintext":
                httpx.get(_https(stack, service, path).replace("https://", "http://"), headers=headers, timeout=10)
            else:
                with _tls_client(keys, how) as client:
                    client.get(_https(stack, service, path), headers=headers)
    assert [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)] == before


HTTP_CALLS = [
    ("upload", "GET", "/api/v1/documents/{tagged}"),
    ("upload", "GET", "/api/v1/documents/{queued}/content"),
    ("upload", "GET", "/api/v1/documents"),
    ("search", "GET", "/api/v1/search?q=예산"),
    ("model-serving", "POST", "/api/v1/predict"),
    ("model-serving", "GET", "/api/v1/models"),
]


@pytest.mark.parametrize("token_kind,expected", [("none", 401), ("another-key", 401), ("expired", 401)])
@pytest.mark.parametrize("service,method,path", HTTP_CALLS)
def test_service_http_ports_refuse_without_a_valid_token(stack: StackLayout, victims: Victims, keys: Keys,
                                                         admin_dsn: str, service: str, method: str, path: str,
                                                         token_kind: str, expected: int) -> None:
    """With a platform certificate (a host of ours) but no valid user token: 401, nothing changes."""
    before = [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)]
    headers = {}
    if token_kind == "another-key":
        headers["Authorization"] = f"Bearer {_user_token(keys.foreign_jwt_private, victims.tenant)}"
    elif token_kind == "expired":
        now = int(time.time())
        headers["Authorization"] = f"Bearer {_user_token(keys.jwt_private, victims.tenant, 60, now - 3600)}"
    url = _https(stack, service, path.format(tagged=victims.tagged, queued=victims.queued))
    with stack.client(timeout=30) as client:
        resp = client.request(method, url, headers=headers, json={"text": "예산"} if method == "POST" else None)
    assert resp.status_code == expected, resp.text
    assert [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)] == before


def test_another_tenants_user_cannot_read_the_victim_on_the_service_port(stack: StackLayout, victims: Victims,
                                                                        keys: Keys) -> None:
    headers = {"Authorization": f"Bearer {_user_token(keys.jwt_private, victims.other_tenant)}"}
    with stack.client(timeout=10) as client:
        for path in (f"/api/v1/documents/{victims.tagged}", f"/api/v1/documents/{victims.queued}/content"):
            assert client.get(_https(stack, "upload", path), headers=headers).status_code == 404


@pytest.mark.parametrize("service,path", [("model-serving", "/api/v1/predict"), ("upload", "/api/v1/quota"),
                                          ("search", "/api/v1/search")])
def test_service_ports_enforce_the_gateways_size_limit(stack: StackLayout, victims: Victims, keys: Keys,
                                                       service: str, path: str) -> None:
    """A 9.5 MB body straight to a service port is refused as the gateway refuses it (413), even
    with a valid token, before anything is processed."""
    headers = {"Authorization": f"Bearer {_user_token(keys.jwt_private, victims.tenant)}",
               "Content-Type": "application/json"}
    body = b'{"text": "' + "가".encode() * (9_500_000 // 3) + b'"}'
    with stack.client(timeout=60) as client:
        resp = client.post(_https(stack, service, path), headers=headers, content=body)
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["max_bytes"] == 8 * 1024 * 1024


def test_doctag_probe_reaches_a_service_port_only_with_a_certificate(stack: StackLayout,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctag probe` (compose's health checks): with the platform's certificates it gets 200 from a
    service's /readyz; the same port over plain HTTP answers nothing."""
    from services.cli.main import main as doctag

    monkeypatch.setenv("DOCTAG_TLS_DIR", str(stack.pki_dir))
    assert doctag(["probe", _https(stack, "upload", "/readyz"), "--role", "upload"]) == 0
    assert doctag(["probe", _https(stack, "upload", "/readyz").replace("https:", "http:")]) == 1


@pytest.mark.parametrize("role", ["tagging-worker", "search", "upload", "model-serving", "web"])
@pytest.mark.parametrize("service,method,path", HTTP_CALLS)
def test_service_http_ports_refuse_a_platform_certificate_of_another_role(
        stack: StackLayout, victims: Victims, keys: Keys, admin_dsn: str, service: str, method: str, path: str,
        role: str) -> None:
    """A host of ours, but not the gateway (HTTP_ACCESS): 403 naming the role, even with a valid
    token, and nothing changes; its /metrics and /readyz stay readable."""
    before = [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)]
    headers = {"Authorization": f"Bearer {_user_token(keys.jwt_private, victims.tenant)}"}
    certificate = _files(keys.pki_dir, role)
    context = ssl.create_default_context(cafile=str(keys.pki_dir / "ca.crt"))
    context.load_cert_chain(certificate.cert, certificate.key)
    with httpx.Client(verify=context, timeout=30) as client:
        url = _https(stack, service, path.format(tagged=victims.tagged, queued=victims.queued))
        resp = client.request(method, url, headers=headers, json={"text": "예산"} if method == "POST" else None)
        assert resp.status_code == 403, resp.text
        assert resp.headers["content-type"] == "application/problem+json" and resp.json()["role"] == role
        assert client.get(_https(stack, service, "/metrics")).status_code == 200
    assert [snapshot(admin_dsn, d) for d in (victims.queued, victims.tagged)] == before
