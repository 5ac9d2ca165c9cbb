"""Mutual TLS for gRPC with certificates that can be renewed while the service runs.

Servers: `grpc.dynamic_ssl_server_credentials` with a fetcher that grpcio calls on each new
handshake; it returns a new configuration when the certificate, key or CA file changed on disk
(after checking that the new certificate and key belong together), else None (keep the current
one). Client certificates are required and must chain to the platform CA.

Clients: grpcio's channel credentials are fixed per channel, so `ReloadingChannel` holds one
long-lived channel (the handshake is paid once per connection, not per call) and replaces it
when the files changed; the old channel gets a grace period for calls still in flight. Each
client also pins the role of the server it calls: it checks the `<role>.role.doctag` DNS name
that only certificates of that role carry (services/common/pki.py).

HTTP between the gateway and the services (`DOCTAG_HTTP_TLS`): `ReloadingSSLContext`, the same
files, for uvicorn and httpx.
"""
from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .metrics import TLS_CERT_EXPIRY
from .pki import role_dns_name

log = logging.getLogger(__name__)

# How often a client looks at its certificate files (a stat each; cheap, but not per call).
CLIENT_CHECK_SECONDS = 5.0
# How long a replaced client channel stays open for the calls that were made on it.
OLD_CHANNEL_GRACE_SECONDS = 120.0


class TlsFilesError(Exception):
    """The certificate files cannot be used (missing, unreadable, key and certificate not a pair)."""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """Changes whenever one of the files is replaced or rewritten."""
        out = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_ino))
            except OSError:
                out.append((0, 0))
        return tuple(out)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) PEM bytes, checked: the certificate's public key is the key's."""
        try:
            ca, cert, key = self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as exc:
            raise TlsFilesError(f"cannot read TLS files: {exc}") from exc
        try:
            parsed = x509.load_pem_x509_certificate(cert)
            private = serialization.load_pem_private_key(key, password=None)
            authorities = x509.load_pem_x509_certificates(ca)
        except ValueError as exc:
            raise TlsFilesError(f"{self.cert} / {self.key} / {self.ca}: {exc}") from exc
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if (parsed.public_key().public_bytes(serialization.Encoding.DER, pub)
                != private.public_key().public_bytes(serialization.Encoding.DER, pub)):
            raise TlsFilesError(f"{self.cert} and {self.key} are not a pair (renewal half written?)")
        TLS_CERT_EXPIRY.labels(self.cert.name).set(parsed.not_valid_after_utc.timestamp())
        # A bundle during a CA rollover: the first to expire is the one that matters.
        TLS_CERT_EXPIRY.labels(self.ca.name).set(min(a.not_valid_after_utc.timestamp() for a in authorities))
        return ca, cert, key


class ServerCredentials:
    """Server credentials that follow the files on disk (one stat of three files per handshake)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = files.stamp()
        ca, cert, key = files.read()
        self._initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._fetch,
                                                   require_client_authentication=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return None
        try:
            ca, cert, key = self.files.read()
        except TlsFilesError as exc:
            log.warning("renewed TLS files not usable yet; keeping the current ones", extra={"error": str(exc)})
            return None
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra={"cert": str(self.files.cert)})
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


ChannelFactory = Callable[[grpc.ChannelCredentials | None, list[tuple[str, str | int]]], grpc.aio.Channel]


class ReloadingChannel:
    """One long-lived client channel to a service of `server_role`, rebuilt when our certificate
    files change. `get()` returns the current channel; create stubs from it per call (cheap)."""

    def __init__(self, target: str, files: TlsFiles | None, server_role: str,
                 options: list[tuple[str, str | int]], *, check_seconds: float = CLIENT_CHECK_SECONDS) -> None:
        self.target = target
        self.files = files
        self.server_role = server_role
        self.options = list(options)
        self.check_seconds = check_seconds
        self._stamp = files.stamp() if files else ()
        self._next_check = time.monotonic() + check_seconds
        self._channel = self._build()
        self._retired: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self.rebuilds = 0

    def _build(self) -> grpc.aio.Channel:
        if self.files is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        options = [*self.options, ("grpc.ssl_target_name_override", role_dns_name(self.server_role))]
        return grpc.aio.secure_channel(self.target, channel_credentials(self.files), options=options)

    def get(self) -> grpc.aio.Channel:
        if self.files is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_seconds
            self._maybe_rebuild()
        return self._channel

    def _maybe_rebuild(self) -> None:
        assert self.files is not None
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return
        try:
            fresh = self._build()
        except TlsFilesError as exc:
            log.warning("renewed TLS files not usable yet; keeping the current channel", extra={"error": str(exc)})
            return
        self._stamp = stamp
        old, self._channel = self._channel, fresh
        self.rebuilds += 1
        log.info("TLS certificate changed: new channel", extra={"target": self.target})
        task = asyncio.get_running_loop().create_task(old.close(grace=OLD_CHANNEL_GRACE_SECONDS))
        self._retired[task] = old
        task.add_done_callback(lambda done: self._retired.pop(done, None))

    async def close(self) -> None:
        """Closes the channel, and at once the replaced ones still waiting for their calls."""
        for task, old in list(self._retired.items()):
            task.cancel()
            await old.close()
        await self._channel.close()


class ReloadingSSLContext:
    """An `ssl.SSLContext` for HTTP over mutual TLS (uvicorn's server side, httpx's client side)
    whose certificate, key and CA are loaded again when the files change: OpenSSL applies a
    context's new certificate to the handshakes that follow, so renewal needs no restart.
    `watch()` checks the files every `interval` seconds (run it as a task)."""

    def __init__(self, files: TlsFiles, *, server: bool) -> None:
        self.files = files
        self.server = server
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_REQUIRED
        if not server:
            self.context.check_hostname = True
        self._stamp = files.stamp()
        self._load()

    def _load(self) -> None:
        self.files.read()  # checks that the certificate and the key belong together
        self.context.load_cert_chain(self.files.cert, self.files.key)
        self.context.load_verify_locations(cafile=str(self.files.ca))

    def reload_if_changed(self) -> bool:
        stamp = self.files.stamp()
        if stamp == self._stamp:
            return False
        try:
            self._load()
        except (TlsFilesError, ssl.SSLError, OSError) as exc:
            log.warning("renewed TLS files not usable yet; keeping the current ones", extra={"error": str(exc)})
            return False
        self._stamp = stamp
        log.info("TLS certificate reloaded", extra={"cert": str(self.files.cert)})
        return True

    async def watch(self, interval: float = CLIENT_CHECK_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
