"""What one host of the inventory is told: its env files, certificates, keys and secrets.

Rendered on the operator's machine from the inventory and vm_layout, into a mapping of file names
(relative to the host's config_dir) to contents and modes; `doctag deploy` copies exactly that.
Each host receives only what its role needs: its own role's certificates and keys (issued from
the operator's platform CA, naming the host and its address), the token/capability keys its
services use, and the database and broker passwords of its own services.

Operator-side state per deployment lives under `var/deploy/<deployment>/`: `pki/` (the CA),
`keys/` (token signing and job capability keys, cursor key), `secrets/db`, `secrets/amqp`
(passwords, generated once), `hosts/<host>/pki` (issued certificates, reissued only when close
to expiry or when the host's address changes, so a second deploy renders the same files).
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from services.common import capability, pki
from services.common.auth import ensure_keypair

from . import units, vm_layout
from .amqp_accounts import url as amqp_url
from .db_accounts import read_or_create_password
from .dbhost_config import REDIS_GATEWAY_USER
from .inventory import Host, Inventory
from .stack import DEFAULT_GATEWAY_CONFIG, render_gateway_config

SECRET = 0o640   # readable by the service account's group on the host
PUBLIC = 0o644
DB_NAME = "doctag"
AMQP_VHOST = "doctag"
AMQP_PREFIX = "doctag"

# The PostgreSQL role of each service that connects to the database (infra/migrations 0001).
DB_ROLE = {"gateway": "doctag_gateway", "upload": "doctag_upload", "search": "doctag_search",
           "model-serving": "doctag_model", "training-worker": "doctag_training"}
# The RabbitMQ users (services/cli/amqp_accounts.py) of the services that use the broker.
AMQP_SERVICES = ("upload", "tagging-worker", "model-serving", "training-worker")
DB_CERT_ROLE = "db"  # the db host's certificate (services/cli/dbhost.py serves PostgreSQL and AMQPS with it)


@dataclass(frozen=True)
class HostFile:
    content: bytes
    mode: int = PUBLIC


@dataclass
class HostConfig:
    host: Host
    files: dict[str, HostFile] = field(default_factory=dict)   # relative to the host's config_dir
    units: dict[str, str] = field(default_factory=dict)        # systemd unit name -> text
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.files):
            f = self.files[name]
            h.update(f"{name}\0{f.mode:o}\0".encode() + hashlib.sha256(f.content).digest())
        for name in sorted(self.units):
            h.update(f"unit {name}\0".encode() + self.units[name].encode())
        return h.hexdigest()


@dataclass(frozen=True)
class OperatorState:
    """The operator's files for one deployment (var/deploy/<deployment>)."""

    root: Path

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def host_pki(self, host: str) -> Path:
        return self.root / "hosts" / host / "pki"

    @property
    def operator_pki(self) -> Path:
        """The operator's own client certificate (role gateway, as `make up`'s tools act): readiness probes."""
        return self.root / "operator-pki"

    def ensure(self) -> None:
        pki.init_ca(self.pki_dir)
        ensure_keypair(self.keys_dir)
        capability.ensure_keypair(self.keys_dir)
        cursor = self.keys_dir / "cursor_hmac.key"
        if not cursor.exists():
            cursor.write_bytes(secrets.token_bytes(32))
            cursor.chmod(0o600)
        cert, key = pki.cert_paths(self.operator_pki, "gateway")
        if not key.exists() or pki.needs_renewal(cert):
            pki.issue(self.pki_dir, "gateway", hosts=["operator"], ips=[], out_dir=self.operator_pki)

    def db_password(self, role: str) -> Path:
        path = self.secrets_dir / "db" / role
        read_or_create_password(path)
        return path

    def amqp_password(self, service: str) -> Path:
        path = self.secrets_dir / "amqp" / f"{AMQP_PREFIX}-{service}"
        read_or_create_password(path)
        return path

    def redis_password(self) -> Path:
        path = self.secrets_dir / "redis" / REDIS_GATEWAY_USER
        read_or_create_password(path)
        return path


def _has_sans(cert_path: Path, host: Host) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return host.name in san.get_values_for_type(x509.DNSName) and host.address in {
        str(a) for a in san.get_values_for_type(x509.IPAddress)}


def host_certificate(state: OperatorState, host: Host, role: str) -> tuple[bytes, bytes]:
    """(certificate, key) of `role` on `host`: kept from the last deploy unless close to expiry or
    no longer naming the host's name and address."""
    out = state.host_pki(host.name)
    cert, key = pki.cert_paths(out, role)
    if not key.exists() or pki.needs_renewal(cert) or not _has_sans(cert, host):
        pki.issue(state.pki_dir, role, hosts=[host.name], ips=[host.address], out_dir=out)
    return cert.read_bytes(), key.read_bytes()


def service_env(inv: Inventory, host: Host, service: vm_layout.Service) -> dict[str, str]:
    """The DOCTAG_* variables of one service on one host (its env file)."""
    cfg, keys = host.config_dir, host.config_dir / "keys"
    db = inv.one("db")
    env = {
        "DOCTAG_SERVICE_INSTANCE": f"{host.name}-{service.name}",
        "DOCTAG_STATE_DIR": str(host.state_dir),
        "DOCTAG_TLS_DIR": str(cfg / "pki"),
        "DOCTAG_HTTP_HOST": host.address,
        "DOCTAG_HTTP_PORT": str(service.http_port),
        "DOCTAG_JWT_PUBLIC_KEY_FILE": str(keys / "jwt_public.pem"),
        "DOCTAG_CURSOR_KEY_FILE": str(keys / "cursor_hmac.key"),
        "DOCTAG_DB_HOST": db.address,
        "DOCTAG_DB_NAME": DB_NAME,
        "PYTHONUNBUFFERED": "1",
    }
    if service.grpc_port is not None:
        env.update({"DOCTAG_GRPC_HOST": host.address, "DOCTAG_GRPC_PORT": str(service.grpc_port)})
    env["DOCTAG_UPSTREAM_TLS" if service.name == "gateway" else "DOCTAG_HTTP_TLS"] = "true"
    if service.name in DB_ROLE:
        env["DOCTAG_DB_PASSWORD_FILE"] = str(cfg / "secrets" / "db" / DB_ROLE[service.name])
        # TLS to PostgreSQL, its certificate (issued for the db host's address) checked against the platform CA
        env["DOCTAG_DB_SSLMODE"] = "verify-full"
    if service.name in AMQP_SERVICES:
        env.update({
            "DOCTAG_AMQP_URL": amqp_url(db.address, vm_layout.RABBITMQ_PORT, AMQP_VHOST,
                                        f"{AMQP_PREFIX}-{service.name}"),
            "DOCTAG_AMQP_PASSWORD_FILE": str(cfg / "secrets" / "amqp" / f"{AMQP_PREFIX}-{service.name}"),
            "DOCTAG_AMQP_DECLARE_TOPOLOGY": "false",
            "DOCTAG_AMQP_PREFIX": AMQP_PREFIX,
        })
    def model() -> str:
        return f"{inv.one('model').address}:{vm_layout.MODEL_SERVING.grpc_port}"

    uploads = ",".join(f"{h.address}:{vm_layout.UPLOAD.grpc_port}" for h in inv.of_role("web"))
    if service.name == "upload":
        env.update({"DOCTAG_BLOB_DIR": str(host.blob_dir), "DOCTAG_RELAY_DB_PASSWORD_FILE":
                    str(cfg / "secrets" / "db" / "doctag_relay"),
                    "DOCTAG_JOB_CAPABILITY_PRIVATE_KEY_FILE": str(keys / capability.PRIVATE_NAME),
                    "DOCTAG_JOB_CAPABILITY_PUBLIC_KEY_FILE": str(keys / capability.PUBLIC_NAME)})
    elif service.name == "search":
        env.update({"DOCTAG_BLOB_DIR": str(host.blob_dir), "DOCTAG_MODEL_GRPC_TARGET": model()})
    elif service.name == "tagging-worker":
        env.update({"DOCTAG_DOCUMENTS_GRPC_TARGET": uploads, "DOCTAG_MODEL_GRPC_TARGET": model()})
    elif service.name == "web":
        env["DOCTAG_WEB_API_URL"] = f"http://{inv.one('gateway').address}:{vm_layout.GATEWAY.http_port}"
    elif service.name == "model-serving":
        env.update({"DOCTAG_JOB_CAPABILITY_PUBLIC_KEY_FILE": str(keys / capability.PUBLIC_NAME),
                    "DOCTAG_MODEL_STORE": str(host.state_dir / "models"),
                    "DOCTAG_ONNX_CACHE_DIR": str(host.state_dir / "onnx-cache")})
    elif service.name == "gateway":
        env.update({
            "DOCTAG_GATEWAY_STATUS_PORT": str(service.status_port),
            # /readyz and /metrics on the host's address: platform certificates only (the scraper's).
            "DOCTAG_GATEWAY_STATUS_TLS": "true",
            "DOCTAG_GATEWAY_CONFIG": str(cfg / "kong.yml"),
            "DOCTAG_JWT_PRIVATE_KEY_FILE": str(keys / "jwt_private.pem"),
            "DOCTAG_GATEWAY_REDIS_URL": f"redis://{REDIS_GATEWAY_USER}@{db.address}:{vm_layout.REDIS_PORT}/0",
            "DOCTAG_GATEWAY_REDIS_PASSWORD_FILE": str(cfg / "secrets" / "redis" / REDIS_GATEWAY_USER),
            # UI logins arrive from the web hosts, which name the user's address: only they are believed.
            "DOCTAG_GATEWAY_TRUSTED_FORWARDERS": json.dumps([h.address for h in inv.of_role("web")]),
        })
    env.update(host.env)
    return env


def gateway_targets(inv: Inventory) -> dict[str, list[str]]:
    web = inv.of_role("web")
    return {
        "upload-upstream": [f"{h.address}:{vm_layout.UPLOAD.http_port}" for h in web],
        "search-upstream": [f"{h.address}:{vm_layout.SEARCH.http_port}" for h in web],
        "web-upstream": [f"{h.address}:{vm_layout.WEB.http_port}" for h in web],
        "model-serving-upstream": [f"{h.address}:{vm_layout.MODEL_SERVING.http_port}" for h in inv.of_role("model")],
    }


def host_paths(host: Host) -> units.HostPaths:
    return units.HostPaths(install_root=host.install_root, config_dir=host.config_dir, state_dir=host.state_dir,
                           blob_dir=host.blob_dir, service_user=host.service_user)


def render_host(inv: Inventory, host: Host, state: OperatorState, *, inventory_text: str | None = None
                ) -> HostConfig:
    """Every file `deploy` writes on `host` (and nothing another role needs)."""
    state.ensure()
    role = host.vm_role
    config = HostConfig(host)
    files = config.files
    files["pki/ca.crt"] = HostFile(pki.ca_paths(state.pki_dir)[0].read_bytes())
    names = {s.name for s in role.services}
    for service in role.services:
        cert, key = host_certificate(state, host, service.name)
        files[f"pki/{service.name}.crt"] = HostFile(cert)
        files[f"pki/{service.name}.key"] = HostFile(key, SECRET)
        env = service_env(inv, host, service)
        config.envs[service.name] = env
        files[f"{service.name}.env"] = HostFile(units.render_env_file(env).encode(), SECRET)
    if names:
        files["keys/jwt_public.pem"] = HostFile((state.keys_dir / "jwt_public.pem").read_bytes())
        files["keys/cursor_hmac.key"] = HostFile((state.keys_dir / "cursor_hmac.key").read_bytes(), SECRET)
    if "gateway" in names:
        files["keys/jwt_private.pem"] = HostFile((state.keys_dir / "jwt_private.pem").read_bytes(), SECRET)
        # the rate-limiting plugin's Redis is the db host's, as the gateway's ACL user: the file holds
        # its password, so it is a secret too
        redis = {"host": inv.one("db").address, "port": vm_layout.REDIS_PORT, "username": REDIS_GATEWAY_USER,
                 "password": state.redis_password().read_text(encoding="utf-8").strip()}
        files["kong.yml"] = HostFile(render_gateway_config(DEFAULT_GATEWAY_CONFIG, gateway_targets(inv),
                                                           http_tls=True, redis=redis).encode(), SECRET)
    if "upload" in names:
        files[f"keys/{capability.PRIVATE_NAME}"] = HostFile(
            (state.keys_dir / capability.PRIVATE_NAME).read_bytes(), SECRET)
    if names & {"upload", "model-serving"}:
        files[f"keys/{capability.PUBLIC_NAME}"] = HostFile((state.keys_dir / capability.PUBLIC_NAME).read_bytes())
    db_roles = sorted({DB_ROLE[n] for n in names if n in DB_ROLE} | ({"doctag_relay"} if "upload" in names else set()))
    amqp = [n for n in AMQP_SERVICES if n in names]
    if role.name == "db":  # the db host sets every account's password and serves TLS as role `db`
        db_roles, amqp = sorted({*DB_ROLE.values(), "doctag_relay"}), [*AMQP_SERVICES, "admin"]
        cert, key = host_certificate(state, host, DB_CERT_ROLE)
        files[f"pki/{DB_CERT_ROLE}.crt"] = HostFile(cert)
        files[f"pki/{DB_CERT_ROLE}.key"] = HostFile(key, SECRET)
        if inventory_text is not None:
            files["inventory.yaml"] = HostFile(inventory_text.encode())
    if role.name == "db" or "gateway" in names:
        files[f"secrets/redis/{REDIS_GATEWAY_USER}"] = HostFile(state.redis_password().read_bytes(), SECRET)
    for db_role in db_roles:
        files[f"secrets/db/{db_role}"] = HostFile(state.db_password(db_role).read_bytes(), SECRET)
    for amqp_service in amqp:
        path = state.amqp_password(amqp_service)
        files[f"secrets/amqp/{path.name}"] = HostFile(path.read_bytes(), SECRET)
    paths = host_paths(host)
    if host.service_manager == "systemd":
        config.units = units.render_units(role, paths)
    elif role.services:
        files["supervisord.conf"] = HostFile(units.render_supervisor(role, paths, config.envs).encode(), SECRET)
    return config
