"""compose.yaml says what services/cli/vm_layout.py says: one container per VM of each role (named
as `k8s_manifests.compose_names`), the services' ports, memory limits (the sum of the role's
MemoryMax), the peer settings the deployment uses, and its kong.yml made from gateway/kong.yml.
It is also valid against the Compose Specification's JSON schema (vendored, Apache-2.0, by
check-jsonschema): `docker compose config` cannot run here (no compose plugin, no engine)."""
from __future__ import annotations

import configparser
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.cli import k8s_manifests, vm_layout
from services.cli.vm_layout import PEER_SETTINGS

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
SUPERVISOR_WEB = REPO / "infra" / "compose" / "supervisord-web.conf"
SUPERVISOR_MODEL = REPO / "infra" / "compose" / "supervisord-model.conf"
DATASTORE_IMAGES = {"postgres": "postgres:", "rabbitmq": "rabbitmq:", "redis": "redis:"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # merge keys (<<) resolved as compose does


def _containers_of(compose: dict[str, Any], role: str) -> list[str]:
    return [name for name, svc in compose["services"].items()
            if (svc.get("build") or {}).get("args", {}).get("ROLE") == role and name != "migrate"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _supervisor_env(path: Path = SUPERVISOR_WEB) -> dict[str, dict[str, str]]:
    """Program -> its environment in supervisord-web.conf (the web VM's three services) or
    supervisord-model.conf (model-serving and the training worker)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    out = {}
    for section in parser.sections():
        if section.startswith("program:"):
            pairs = re.findall(r'(\w+)="([^"]*)"', parser[section].get("environment", ""))
            out[section.removeprefix("program:")] = dict(pairs)
    return out


def _service_env(compose: dict[str, Any], container: str, service: vm_layout.Service) -> dict[str, str]:
    env = _env(compose["services"][container])
    if container.startswith("web-"):
        env.update(_supervisor_env()[service.name])
    if container == "model":
        env.update(_supervisor_env(SUPERVISOR_MODEL)[service.name])
    return env


def test_compose_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    # ... and the schema does refuse a misspelt key.
    bad = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "mem_limits": 1}}}
    assert list(validator.iter_errors(bad))


def test_one_container_per_vm_of_each_role(compose: dict[str, Any]) -> None:
    for role in vm_layout.ROLES:
        if role.name == "db":
            for store, image in DATASTORE_IMAGES.items():
                assert compose["services"][store]["image"].startswith(image)
            continue
        assert _containers_of(compose, role.name) == k8s_manifests.compose_names(role), role.name


def test_memory_limits_are_the_roles_memory_max(compose: dict[str, Any]) -> None:
    for role in vm_layout.ROLES:
        for name in _containers_of(compose, role.name):
            assert compose["services"][name]["mem_limit"] == f"{sum(s.memory_max_mib for s in role.services)}m"


def test_services_listen_on_the_layouts_ports(compose: dict[str, Any]) -> None:
    supervised = _supervisor_env()
    assert set(supervised) == {s.name for s in vm_layout.role("web").services}
    assert set(_supervisor_env(SUPERVISOR_MODEL)) == {s.name for s in vm_layout.role("model").services}
    for role in vm_layout.ROLES:
        for container in _containers_of(compose, role.name):
            for svc in role.services:
                env = _service_env(compose, container, svc)
                ports = vm_layout.port_settings(svc)
                # DOCTAG_GATEWAY_STATUS_PORT and the services' defaults: what is set must agree.
                assert {k: env[k] for k in ports if k in env} == {k: v for k, v in ports.items() if k in env}
                assert env.get("DOCTAG_HTTP_PORT") == str(svc.http_port), (container, svc.name)


def test_peer_settings_point_at_the_peers_ports(compose: dict[str, Any]) -> None:
    for client, setting, server, kind in PEER_SETTINGS:
        client_role, server_role = vm_layout.role_of_service(client), vm_layout.role_of_service(server)
        peer = vm_layout.service(server)
        port = peer.grpc_port if kind == "grpc" else peer.http_port
        for container in _containers_of(compose, client_role.name):
            value = _service_env(compose, container, vm_layout.service(client))[setting]
            hosts = [re.sub(r"^\w+://", "", target).rsplit(":", 1) for target in value.split(",")]
            assert {h for h, _ in hosts} <= set(k8s_manifests.compose_names(server_role)), (setting, value)
            assert {int(p) for _, p in hosts} == {port}, (setting, value)


def test_gateway_reaches_redis_and_its_kong_yml_is_current(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    assert _env(gateway)["DOCTAG_GATEWAY_REDIS_URL"] == f"redis://redis:{vm_layout.REDIS_PORT}/0"
    assert "redis" in gateway["depends_on"]
    committed = (REPO / "infra" / "compose" / "kong.yml").read_text(encoding="utf-8")
    assert committed == k8s_manifests.compose_gateway_config(), "run `doctag manifests compose-gateway`"
    upstreams = {u["name"]: [t["target"] for t in u["targets"]] for u in yaml.safe_load(committed)["upstreams"]}
    assert upstreams["upload-upstream"] == ["web-1:8101", "web-2:8101"]


def test_every_platform_container_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for role in vm_layout.ROLES:
        for name in _containers_of(compose, role.name):
            assert "healthcheck" in compose["services"][name], name
