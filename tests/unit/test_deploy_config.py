"""What `doctag deploy` writes on each host of the example inventory: peers, secrets, certificates."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509

from services.cli import deploy_config, units, vm_layout
from services.cli.deploy import Deployer, Transport
from services.cli.inventory import load_inventory, parse_inventory
from services.common import pki

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "inventory.example.yaml"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> deploy_config.OperatorState:
    return deploy_config.OperatorState(tmp_path_factory.mktemp("deploy"))


def _render(host: str, state: deploy_config.OperatorState) -> deploy_config.HostConfig:
    inv = load_inventory(EXAMPLE)
    return deploy_config.render_host(inv, inv.host(host), state, inventory_text=EXAMPLE.read_text())


def _env(config: deploy_config.HostConfig, service: str) -> dict[str, str]:
    return units.parse_env_file(config.files[f"{service}.env"].content.decode())


def test_tagging_host_knows_every_web_host_and_the_model_host_and_holds_no_db_secret(state) -> None:
    config = _render("tagging-2", state)
    env = _env(config, "tagging-worker")
    assert env["DOCTAG_DOCUMENTS_GRPC_TARGET"] == "10.20.0.30:9101,10.20.0.31:9101"
    assert env["DOCTAG_MODEL_GRPC_TARGET"] == "10.20.0.20:9121"
    assert env["DOCTAG_AMQP_URL"] == "amqp://doctag-tagging-worker@10.20.0.10:5672/doctag"
    assert env["DOCTAG_HTTP_HOST"] == "10.20.0.41" and env["DOCTAG_HTTP_TLS"] == "true"
    assert "DOCTAG_DB_SSLMODE" not in env  # no database access at all
    assert sorted(n for n in config.files if n.startswith(("secrets/", "pki/", "keys/"))) == [
        "keys/cursor_hmac.key", "keys/jwt_public.pem", "pki/ca.crt", "pki/tagging-worker.crt",
        "pki/tagging-worker.key", "secrets/amqp/doctag-tagging-worker"]
    assert list(config.units) == ["doctag-tagging-worker.service"]


def test_web_host_gets_its_three_services_and_only_their_secrets(state) -> None:
    config = _render("web-1", state)
    assert {"upload.env", "search.env", "web.env"} <= set(config.files)
    assert sorted(n for n in config.files if n.startswith("secrets/")) == [
        "secrets/amqp/doctag-upload", "secrets/db/doctag_relay", "secrets/db/doctag_search", "secrets/db/doctag_upload"]
    upload = _env(config, "upload")
    assert upload["DOCTAG_DB_HOST"] == "10.20.0.10" and upload["DOCTAG_BLOB_DIR"] == "/srv/doctag-blobs"
    assert upload["DOCTAG_DB_PASSWORD_FILE"] == "/etc/doctag/secrets/db/doctag_upload"
    assert (upload["DOCTAG_GRPC_HOST"], upload["DOCTAG_GRPC_PORT"]) == ("10.20.0.30", "9101")
    assert _env(config, "web")["DOCTAG_WEB_API_URL"] == "http://10.20.0.50:8080"
    assert "keys/jwt_private.pem" not in config.files  # only the gateway signs tokens
    assert config.files["pki/upload.key"].mode == 0o640 and config.files["pki/ca.crt"].mode == 0o644
    # the certificate names the host and its address, and the role
    cert = x509.load_pem_x509_certificate(config.files["pki/upload.crt"].content)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "web-1" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.20.0.30"]
    assert pki.role_of(cert) == "upload"


def test_gateway_host_routes_to_every_web_host_over_mutual_tls(state) -> None:
    config = _render("gw-1", state)
    kong = yaml.safe_load(config.files["kong.yml"].content)
    targets = {u["name"]: [t["target"] for t in u["targets"]] for u in kong["upstreams"]}
    assert targets["upload-upstream"] == ["10.20.0.30:8101", "10.20.0.31:8101"]
    assert targets["web-upstream"] == ["10.20.0.30:8141", "10.20.0.31:8141"]
    assert targets["model-serving-upstream"] == ["10.20.0.20:8121"]
    assert {s["protocol"] for s in kong["services"] if s.get("host") in targets} == {"https"}
    limits = [p for p in kong["plugins"] if p["name"] == "rate-limiting" and p["config"]["policy"] == "redis"]
    password = config.files["secrets/redis/doctag-gateway"].content.decode().strip()
    assert limits and all(p["config"]["redis"] == {"host": "10.20.0.10", "port": 6379, "username": "doctag-gateway",
                                                   "password": password} for p in limits)
    assert config.files["kong.yml"].mode == 0o640
    from gateway.config import parse_config

    parse_config(kong, "kong.yml")  # the gateway accepts what deploy writes
    env = _env(config, "gateway")
    assert env["DOCTAG_GATEWAY_TRUSTED_FORWARDERS"] == '["10.20.0.30", "10.20.0.31"]'
    assert env["DOCTAG_GATEWAY_REDIS_URL"] == "redis://doctag-gateway@10.20.0.10:6379/0"
    assert env["DOCTAG_GATEWAY_REDIS_PASSWORD_FILE"] == "/etc/doctag/secrets/redis/doctag-gateway"
    assert env["DOCTAG_DB_SSLMODE"] == "verify-full"
    assert env["DOCTAG_GATEWAY_STATUS_TLS"] == "true"   # its status listener is on the host's address
    assert "keys/jwt_private.pem" in config.files and "secrets/db/doctag_gateway" in config.files
    assert "secrets/redis/doctag-gateway" in config.files


def test_db_host_gets_every_password_the_inventory_and_only_its_own_certificate(state) -> None:
    config = _render("db-1", state)
    assert sorted(n for n in config.files if n.startswith("pki/")) == ["pki/ca.crt", "pki/db.crt", "pki/db.key"]
    cert = x509.load_pem_x509_certificate(config.files["pki/db.crt"].content)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.20.0.10"]
    assert {"secrets/db/doctag_gateway", "secrets/db/doctag_model", "secrets/amqp/doctag-admin",
            "secrets/amqp/doctag-upload", "secrets/redis/doctag-gateway", "inventory.yaml"} <= set(config.files)
    assert not config.units
    # the same Redis password on the db host and the gateway host
    assert config.files["secrets/redis/doctag-gateway"] == _render("gw-1", state).files["secrets/redis/doctag-gateway"]


def test_rendering_twice_gives_the_same_files_so_a_redeploy_is_unchanged(state) -> None:
    first, second = _render("model-1", state), _render("model-1", state)
    assert first.digest() == second.digest()
    # the same password on the db host and on the host that uses it
    assert _render("db-1", state).files["secrets/db/doctag_model"] == first.files["secrets/db/doctag_model"]


def test_a_changed_address_reissues_the_certificate(state, tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["hosts"][1]["address"] = "10.20.0.21"
    inv = parse_inventory(data, "moved.yaml")
    moved = deploy_config.render_host(inv, inv.host("model-1"), state)
    cert = x509.load_pem_x509_certificate(moved.files["pki/model-serving.crt"].content)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.20.0.21"]


def test_supervisor_mode_writes_supervisord_conf_instead_of_units(state) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["defaults"].update(service_manager="supervisor", service_user=None, install_root="/x/opt")
    inv = parse_inventory(data, "sup.yaml")
    config = deploy_config.render_host(inv, inv.host("web-2"), state)
    conf = config.files["supervisord.conf"].content.decode()
    assert "command=/x/opt/current/venv/bin/python -m services.upload" in conf and not config.units
    assert 'DOCTAG_HTTP_HOST="10.20.0.31"' in conf


def test_transport_argv() -> None:
    inv = load_inventory(EXAMPLE)
    host = inv.host("web-1")
    assert Transport().argv(host)[-1] == "root@10.20.0.30"
    assert Transport("ssh -F cfg").argv(host)[:3] == ["ssh", "-F", "cfg"]
    assert Transport("ip netns exec dt-{name} sh -c").argv(host) == ["ip", "netns", "exec", "dt-web-1", "sh", "-c"]
    d = Deployer(inv, transport=Transport(), log=False)
    assert d.probes(inv.host("gw-1")) == [("gateway", "https://10.20.0.50:8100/readyz")]
    assert ("upload gRPC", "grpc://10.20.0.30:9101/upload") in d.probes(host)


def test_inventory_env_reaches_every_service_and_a_host_entry_wins(state) -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["defaults"]["env"] = {"DOCTAG_LOG_LEVEL": "DEBUG", "DOCTAG_DB_SSLMODE": "verify-full"}
    data["hosts"][2]["env"] = {"DOCTAG_LOG_LEVEL": "WARNING"}
    inv = parse_inventory(data, "env.yaml")
    config = deploy_config.render_host(inv, inv.host("web-1"), state)
    assert {_env(config, s)["DOCTAG_LOG_LEVEL"] for s in ("upload", "search", "web")} == {"WARNING"}
    assert _env(config, "upload")["DOCTAG_DB_SSLMODE"] == "verify-full"


def test_deploy_refuses_a_host_of_another_role_and_a_missing_bundle(tmp_path: Path) -> None:
    from services.cli.deploy import DeployError, deploy_role
    from services.cli.inventory import InventoryError

    inv = load_inventory(EXAMPLE)
    d = Deployer(inv, transport=Transport("false"), dist=tmp_path, version="0.1.0+x", state_root=tmp_path, log=False)
    with pytest.raises(InventoryError, match="host gw-1 has role gateway, not web"):
        deploy_role(d, "web", "gw-1")
    with pytest.raises(DeployError, match=r"no bundle .*doctag-0\.1\.0\+x-web\.tar\.gz: run `make bundle`"):
        deploy_role(d, "web", "web-1")


def test_deploy_writes_prometheus_targets_of_every_host(tmp_path: Path) -> None:
    import json

    from services.cli.deploy import write_prometheus_targets

    pytest.importorskip("services.cli.prometheus_targets")  # wip-k8s's module, merged by the lead
    inv = load_inventory(EXAMPLE)
    message = write_prometheus_targets(inv, tmp_path / "sd" / "doctag.json")
    assert "7 hosts" in message
    entries = json.loads((tmp_path / "sd" / "doctag.json").read_text())
    assert {"targets": ["10.20.0.50:8100"], "labels": {"job": "gateway", "role": "gateway", "host": "gw-1"}} in entries


def test_every_service_that_reaches_a_datastore_gets_its_credentials() -> None:
    """The arrows of the layout say who connects to PostgreSQL and RabbitMQ; deploy must hand each of
    them its own account (a service without one would fall back to the developer defaults)."""
    to_postgres = {c for c, s in vm_layout.ARROWS if s == "postgres"}
    to_rabbitmq = {c for c, s in vm_layout.ARROWS if s == "rabbitmq"}
    assert to_postgres == set(deploy_config.DB_ROLE)
    assert to_rabbitmq == set(deploy_config.AMQP_SERVICES)
