"""Helpers shared by tests and benchmarks. Importing this module changes nothing (unlike
tests/conftest.py, which points the DOCTAG_* environment at the test session)."""
from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

    from services.common.grpc_utils import GrpcSecurity
    from services.common.tls import TlsFiles


def pdf_without_text() -> bytes:
    """A one-page PDF with a drawing and no text layer, like a scanned page."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.rect(100, 100, 200, 200, fill=1)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def delete_topology(amqp_url: str, prefix: str) -> None:
    """Removes the exchanges and queues of one AMQP prefix (a test session's, a benchmark's)."""
    import aio_pika

    from services.common.amqp import Topology

    async def run() -> None:
        connection = await aio_pika.connect(amqp_url)
        try:
            await Topology(prefix=prefix).delete(await connection.channel())
        finally:
            await connection.close()

    asyncio.run(run())



# -- mutual TLS for test clients and servers (the session's PKI: DOCTAG_TLS_DIR, set by tests/conftest.py)

def pki_dir() -> Path:
    return Path(os.environ["DOCTAG_TLS_DIR"])


def tls_files(role: str, directory: Path | None = None) -> TlsFiles:
    from services.common.tls import TlsFiles

    d = directory or pki_dir()
    return TlsFiles(d / "ca.crt", d / f"{role}.crt", d / f"{role}.key")


def grpc_security(role: str, *, jwt_public_key: Path | None = None, directory: Path | None = None) -> GrpcSecurity:
    """What a process of `role` uses: its certificate from the session's PKI; end users' tokens are
    verified with `jwt_public_key` (default: the state directory's)."""
    from services.common.grpc_utils import GrpcSecurity
    from services.common.settings import CommonSettings

    return GrpcSecurity.from_settings(CommonSettings(service_name=role, tls_dir=directory or pki_dir(),
                                                     jwt_public_key_file=jwt_public_key))


def _options(server_role: str) -> list[tuple[str, str]]:
    from services.common.pki import role_dns_name

    return [("grpc.ssl_target_name_override", role_dns_name(server_role))]


def sync_channel(target: str, role: str, server_role: str) -> grpc.Channel:
    """A blocking client channel with `role`'s certificate to a server of `server_role`."""
    import grpc

    from services.common.tls import channel_credentials

    return grpc.secure_channel(target, channel_credentials(tls_files(role)), options=_options(server_role))


def aio_channel(target: str, role: str, server_role: str, files: TlsFiles | None = None) -> grpc.aio.Channel:
    """An asyncio client channel with `role`'s certificate (or `files`) to a server of `server_role`."""
    import grpc

    from services.common.tls import channel_credentials

    return grpc.aio.secure_channel(target, channel_credentials(files or tls_files(role)),
                                   options=_options(server_role))


class WorkerDocumentsStub:
    """Calls upload's Documents service the way the tagging worker does: with the tagging-worker
    certificate (the channel's) and, on each call, the job capability upload's relay would have
    signed for the request's document, tenant and content version (ReadContent: the document's
    stored version, read as the admin role). GetDocument carries an end user's token of the
    request's tenant instead (`user_token(tenant_id)`), over `gateway_channel` (the gateway's
    certificate: the worker may not call it)."""

    def __init__(self, channel: grpc.aio.Channel, admin_dsn: str, user_token: Callable[[str], str] | None = None,
                 gateway_channel: grpc.aio.Channel | None = None, ttl_seconds: int = 600) -> None:
        from services.common.capability import CapabilitySigner
        from services.common.pb import documents_pb2_grpc
        from services.common.settings import CommonSettings

        self._stub = documents_pb2_grpc.DocumentsStub(channel)  # type: ignore[no-untyped-call]
        self._gateway_stub = documents_pb2_grpc.DocumentsStub(gateway_channel or channel)  # type: ignore[no-untyped-call]
        self._admin_dsn = admin_dsn
        self._user_token = user_token
        self.signer = CapabilitySigner(CommonSettings().capability_private_key_path, ttl_seconds)

    def _stored_sha(self, document_id: str) -> str:
        import psycopg

        with psycopg.connect(self._admin_dsn) as conn:
            row = conn.execute("SELECT sha256 FROM documents.documents WHERE id = %s", (document_id,)).fetchone()
        return str(row[0]) if row else "0" * 64

    def _meta(self, kwargs: dict[str, Any], capability: str) -> dict[str, Any]:
        from services.common.access import CAPABILITY_KEY

        return {**kwargs, "metadata": (*kwargs.pop("metadata", ()), (CAPABILITY_KEY, capability))}

    def ReadContent(self, request: Any, **kwargs: Any) -> Any:
        cap = self.signer.sign(request.document_id, request.tenant_id, self._stored_sha(request.document_id))
        return self._stub.ReadContent(request, **self._meta(kwargs, cap))

    def RecordTaggingResult(self, request: Any, **kwargs: Any) -> Any:
        cap = self.signer.sign(request.document_id, request.tenant_id, request.content_sha256.lower())
        return self._stub.RecordTaggingResult(request, **self._meta(kwargs, cap))

    def GetDocument(self, request: Any, **kwargs: Any) -> Any:
        assert self._user_token is not None, "GetDocument needs an end user's token"
        meta = (*kwargs.pop("metadata", ()), ("authorization", f"Bearer {self._user_token(request.tenant_id)}"))
        return self._gateway_stub.GetDocument(request, metadata=meta, **kwargs)
