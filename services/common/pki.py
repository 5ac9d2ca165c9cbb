"""The platform's private CA and the certificates that name each service's role.

Every certificate carries the role as a SPIFFE-style URI SAN (`spiffe://doctag/role/<role>`),
the role's own DNS name (`<role>.role.doctag`: a client pins the role of the server it calls by
checking that name), and the host's name and addresses. Keys are ECDSA P-256 (supported by
every TLS stack grpcio and OpenSSL ship); private keys are written with permissions 0600, the
CA key too (it can be moved offline after set-up: issuing needs it, serving does not).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The roles that hold certificates (services/common/access.py says what each may call).
# `prometheus`: the scraper's client certificate for the services' /metrics over mutual TLS (HTTP
# accepts any certificate of the platform CA); it may call no gRPC method (services/common/access.py).
SERVICE_ROLES = ("gateway", "upload", "search", "tagging-worker", "model-serving", "training-worker", "web",
                 "prometheus")
# Roles of servers that are not platform services (the db host's PostgreSQL and RabbitMQ): their
# certificates serve TLS only and are never accepted as a client certificate (no clientAuth).
SERVER_ONLY_ROLES = ("db",)
SPIFFE_PREFIX = "spiffe://doctag/role/"
DEFAULT_DAYS = 30
CA_DAYS = 3650
_ROLE_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")


class PkiError(Exception):
    """A PKI command cannot do what was asked (no CA, bad role, ...); the message says why."""


@dataclass(frozen=True)
class IssuedCertificate:
    cert_path: Path
    key_path: Path
    role: str
    not_after: dt.datetime


def role_uri(role: str) -> str:
    return SPIFFE_PREFIX + role


def role_dns_name(role: str) -> str:
    """The DNS SAN only certificates of `role` carry; clients verify the server's role by it."""
    return f"{role}.role.doctag"


def ca_paths(pki_dir: Path) -> tuple[Path, Path]:
    return pki_dir / "ca.crt", pki_dir / "ca.key"


def cert_paths(pki_dir: Path, role: str) -> tuple[Path, Path]:
    return pki_dir / f"{role}.crt", pki_dir / f"{role}.key"


def _write_private(path: Path, data: bytes) -> None:
    """Writes atomically with permissions 0600 (the file never exists with wider ones)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(pki_dir: Path, *, common_name: str = "doctag platform CA") -> tuple[Path, bool]:
    """Creates the CA in `pki_dir` unless one is there; returns (ca.crt, created)."""
    cert_path, key_path = ca_paths(pki_dir)
    if cert_path.exists() and key_path.exists():
        return cert_path, False
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{pki_dir} holds only half a CA (ca.crt or ca.key missing); restore it or remove both")
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "doctag"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, True


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_paths(pki_dir)
    if not key_path.exists():
        raise PkiError(f"no CA key at {key_path}: run `doctag pki init` first (or bring the offline CA key)")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key")
    return x509.load_pem_x509_certificate(cert_path.read_bytes()), key


def issue(pki_dir: Path, role: str, *, hosts: list[str] | tuple[str, ...] = ("localhost",),
          ips: list[str] | tuple[str, ...] = ("127.0.0.1",), days: int = DEFAULT_DAYS, out_dir: Path | None = None,
          not_before: dt.datetime | None = None) -> IssuedCertificate:
    """Issues a certificate for `role` on a host, signed by the CA in `pki_dir`, written as
    `<role>.crt` / `<role>.key` in `out_dir` (default `pki_dir`); replaces an earlier one atomically
    (services pick the new one up without a restart)."""
    if not _ROLE_NAME.fullmatch(role):
        raise PkiError(f"role {role!r}: lower-case letters, digits and '-' only")
    if days < 1:
        raise PkiError("days must be at least 1")
    try:
        addresses = [ipaddress.ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise PkiError(f"--ip: {exc}") from None
    ca_cert, ca_key = _load_ca(pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(minutes=5)
    not_after = start + dt.timedelta(days=days)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(role_uri(role)),
                                    x509.DNSName(role_dns_name(role))]
    sans += [x509.DNSName(h) for h in hosts if h]
    sans += [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "doctag"),
                                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                                 x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else role)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH] if role in SERVER_ONLY_ROLES else
                                             [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = out_dir or pki_dir
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = cert_paths(out, role)
    # Key first: a reader that sees the new certificate finds its key already in place.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    if out != pki_dir:
        _write_public(out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM))
    return IssuedCertificate(cert_path, key_path, role, not_after)


def role_of(cert: x509.Certificate) -> str | None:
    """The role named by a certificate's `spiffe://doctag/role/<role>` URI SAN (None when absent or ambiguous)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    roles = [uri[len(SPIFFE_PREFIX):] for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
             if uri.startswith(SPIFFE_PREFIX)]
    return roles[0] if len(roles) == 1 and _ROLE_NAME.fullmatch(roles[0]) else None


def needs_renewal(cert_path: Path, *, within: dt.timedelta = dt.timedelta(days=10)) -> bool:
    """True when the certificate is missing, unreadable or expires within `within`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    return cert.not_valid_after_utc - _now() < within


def ensure_local(pki_dir: Path, roles: tuple[str, ...] = SERVICE_ROLES, *, host: str = "localhost",
                 ip: str = "127.0.0.1") -> list[str]:
    """What `doctag stack up` does: the CA if missing, and a certificate per role when missing or
    close to expiry. Returns the roles (re)issued."""
    init_ca(pki_dir)
    issued = []
    for role in roles:
        cert_path, key_path = cert_paths(pki_dir, role)
        if not key_path.exists() or needs_renewal(cert_path):
            issue(pki_dir, role, hosts=[host], ips=[ip])
            issued.append(role)
    return issued
