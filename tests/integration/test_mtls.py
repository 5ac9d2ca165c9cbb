"""The platform PKI and mutual TLS over real sockets: `doctag pki` commands, expired certificates
refused on both sides, renewed certificates picked up by a running server and a running client
without a restart and without failing a call."""
from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.cli.main import main as doctag
from services.common import pki
from services.common.access import ANY_PLATFORM_ROLE, AccessInterceptor, Rule
from services.common.grpc_utils import GrpcSecurity, bind
from services.common.tls import ReloadingChannel, ReloadingSSLContext, TlsFiles

pytestmark = pytest.mark.integration

CHECK = "/grpc.health.v1.Health/Check"


def _files(directory: Path, role: str) -> TlsFiles:
    return TlsFiles(directory / "ca.crt", directory / f"{role}.crt", directory / f"{role}.key")


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_pki_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki_dir = tmp_path / "pki"
    assert doctag(["pki", "init", "--dir", str(pki_dir)]) == 0
    assert stat.S_IMODE((pki_dir / "ca.key").stat().st_mode) == 0o600
    ca_serial = _serial(pki_dir / "ca.crt")
    assert doctag(["pki", "init", "--dir", str(pki_dir)]) == 0  # idempotent: the CA is kept
    assert _serial(pki_dir / "ca.crt") == ca_serial and "exists already" in capsys.readouterr().out

    out = tmp_path / "web-1"
    assert doctag(["pki", "issue", "upload", "--host", "web-1.internal", "--ip", "10.0.0.11", "--dir", str(pki_dir),
                   "--out", str(out)]) == 0
    cert = x509.load_pem_x509_certificate((out / "upload.crt").read_bytes())
    assert stat.S_IMODE((out / "upload.key").stat().st_mode) == 0o600
    assert (out / "ca.crt").read_bytes() == (pki_dir / "ca.crt").read_bytes()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://doctag/role/upload"]
    assert set(san.get_values_for_type(x509.DNSName)) == {"upload.role.doctag", "web-1.internal"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.11"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=10)
    assert pki.role_of(cert) == "upload"

    with pytest.raises(SystemExit):  # not a platform role
        doctag(["pki", "issue", "nobody", "--dir", str(pki_dir)])
    assert doctag(["pki", "issue", "search", "--ip", "not-an-ip", "--dir", str(pki_dir)]) == 1
    assert "--ip" in capsys.readouterr().err
    assert doctag(["pki", "issue", "search", "--dir", str(tmp_path / "no-ca")]) == 1
    assert "pki init" in capsys.readouterr().err


def test_ensure_local_renews_certificates_close_to_expiry(tmp_path: Path) -> None:
    issued = pki.ensure_local(tmp_path)
    assert sorted(issued) == sorted(pki.SERVICE_ROLES)
    assert pki.ensure_local(tmp_path) == []  # fresh ones are kept
    now = dt.datetime.now(dt.UTC)
    pki.issue(tmp_path, "search", days=30, not_before=now - dt.timedelta(days=25))  # 5 days left
    before = _serial(tmp_path / "search.crt")
    assert pki.ensure_local(tmp_path) == ["search"]
    assert _serial(tmp_path / "search.crt") != before


@dataclass
class RecordingHealth(health.aio.HealthServicer):  # type: ignore[misc]
    """Health that remembers the serial of each caller's certificate."""

    serials: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    async def Check(self, request, context):  # type: ignore[no-untyped-def]
        pem = (context.auth_context() or {}).get("x509_pem_cert") or [b""]
        self.serials.append(x509.load_pem_x509_certificate(pem[0]).serial_number)
        return await super().Check(request, context)


@dataclass
class Server:
    pki_dir: Path
    target: str
    servicer: RecordingHealth


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A server of role `upload` with its own CA in tmp_path (Health only, any platform role may call)."""
    pki.ensure_local(tmp_path)
    security = GrpcSecurity("upload", _files(tmp_path, "upload"), None)
    grpc_server = grpc.aio.server(interceptors=[AccessInterceptor("t", None, table={CHECK: Rule(ANY_PLATFORM_ROLE)})])
    servicer = RecordingHealth()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = bind(grpc_server, "127.0.0.1:0", security)
    await grpc_server.start()
    yield Server(tmp_path, f"127.0.0.1:{port}", servicer)
    await grpc_server.stop(0)


async def _check(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


def _expire(pki_dir: Path, role: str) -> None:
    """Replaces `role`'s certificate with one that expired yesterday."""
    pki.issue(pki_dir, role, days=30, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=31))


async def test_a_client_with_an_expired_certificate_is_refused(server: Server) -> None:
    _expire(server.pki_dir, "tagging-worker")
    channel = ReloadingChannel(server.target, _files(server.pki_dir, "tagging-worker"), "upload", [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(channel.get())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_a_server_with_an_expired_certificate_is_refused_until_renewed(server: Server) -> None:
    _expire(server.pki_dir, "upload")
    channel = ReloadingChannel(server.target, _files(server.pki_dir, "tagging-worker"), "upload", [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(channel.get())
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()
    # Renewed on disk: the running server presents the new certificate to the next handshake.
    pki.issue(server.pki_dir, "upload")
    fresh = ReloadingChannel(server.target, _files(server.pki_dir, "tagging-worker"), "upload", [])
    assert await _check(fresh.get()) == health_pb2.HealthCheckResponse.SERVING
    await fresh.close()


async def test_a_client_only_talks_to_the_role_it_expects(server: Server) -> None:
    channel = ReloadingChannel(server.target, _files(server.pki_dir, "tagging-worker"), "model-serving", [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _check(channel.get())  # the server's certificate names upload, not model-serving
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_renewed_certificates_are_used_without_dropping_calls(server: Server) -> None:
    """Calls run back to back while both sides' certificates are renewed on disk; none fails, the
    client moves to a new channel with its new certificate, the server accepts it."""
    files = _files(server.pki_dir, "tagging-worker")
    channel = ReloadingChannel(server.target, files, "upload", [], check_seconds=0.05)
    old_serial = _serial(files.cert)
    results: list[int] = []

    async def calls(n: int) -> None:
        for _ in range(n):
            results.append(await _check(channel.get()))
            await asyncio.sleep(0.005)

    task = asyncio.create_task(calls(200))
    await asyncio.sleep(0.3)
    pki.issue(server.pki_dir, "upload")
    pki.issue(server.pki_dir, "tagging-worker")
    await task
    assert results == [health_pb2.HealthCheckResponse.SERVING] * 200
    assert channel.rebuilds == 1
    new_serial = _serial(files.cert)
    assert server.servicer.serials[0] == old_serial and server.servicer.serials[-1] == new_serial
    await channel.close()


async def test_http_tls_context_requires_client_certificates_and_reloads(tmp_path: Path) -> None:
    """The HTTP side (uvicorn's and the gateway's contexts): a client without a certificate of the
    platform CA is refused; a renewed server certificate is presented to the next handshake."""
    pki.ensure_local(tmp_path)
    server_tls = ReloadingSSLContext(_files(tmp_path, "upload"), server=True)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls.context)
    port = server.sockets[0].getsockname()[1]

    async def handshake(context: ssl.SSLContext) -> tuple[bytes, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        data = await reader.read()
        writer.close()
        return data, x509.load_der_x509_certificate(der).serial_number

    client = ReloadingSSLContext(_files(tmp_path, "gateway"), server=False).context
    data, serial = await handshake(client)
    assert data == b"ok" and serial == _serial(tmp_path / "upload.crt")

    anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    try:  # TLS 1.3: the client's side of the handshake may finish before the server refuses it
        data, _ = await handshake(anonymous)
    except (ssl.SSLError, ConnectionError):
        data = b""
    assert data == b"", "answered a client without a certificate"

    pki.issue(tmp_path, "upload")
    assert server_tls.reload_if_changed()
    _, serial = await handshake(client)
    assert serial == _serial(tmp_path / "upload.crt")
    server.close()
    await server.wait_closed()
