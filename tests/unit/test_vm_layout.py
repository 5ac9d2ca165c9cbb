"""The seven-VM layout description agrees with the architecture and with `make up`'s ports."""
import importlib.util
from pathlib import Path

from services.cli import vm_layout
from services.cli.stack import StackLayout


def test_seven_vms_in_dependency_order() -> None:
    assert vm_layout.total_vms() == 7
    names = [r.name for r in vm_layout.ROLES]
    assert names == ["db", "model", "gateway", "web", "tagging"]
    assert {r.name: r.count for r in vm_layout.ROLES} == {"db": 1, "model": 1, "web": 2, "tagging": 2, "gateway": 1}


def test_only_the_model_role_carries_torch() -> None:
    assert [r.name for r in vm_layout.ROLES if r.needs_torch] == ["model"]


def test_every_service_module_exists() -> None:
    for r in vm_layout.ROLES:
        for s in r.services:
            assert importlib.util.find_spec(s.module) is not None, s.module


def test_ports_are_the_ones_make_up_uses() -> None:
    local = StackLayout(state_dir=Path("unused"))
    assert vm_layout.GATEWAY.http_port == local.gateway_port
    assert vm_layout.GATEWAY.status_port == local.gateway_status_port
    assert (vm_layout.UPLOAD.http_port, vm_layout.UPLOAD.grpc_port) == local.upload_ports[0]
    assert (vm_layout.SEARCH.http_port, vm_layout.SEARCH.grpc_port) == local.search_ports[0]
    assert (vm_layout.MODEL_SERVING.http_port, vm_layout.MODEL_SERVING.grpc_port) == local.model_ports
    assert vm_layout.TAGGING_WORKER.http_port == local.worker_ports[0]
    assert vm_layout.WEB.http_port == local.web_ports[0]


def test_arrows_name_known_services() -> None:
    known = {s.name for r in vm_layout.ROLES for s in r.services} | {"postgres", "rabbitmq", "redis"}
    for client, server in vm_layout.ARROWS:
        assert client in known and server in known, (client, server)


def test_every_peer_setting_follows_an_arrow() -> None:
    for client, setting, server, kind in vm_layout.PEER_SETTINGS:
        assert (client, server) in vm_layout.ARROWS, setting
        port = vm_layout.service(server).grpc_port if kind == "grpc" else vm_layout.service(server).http_port
        assert port is not None, (setting, server)


def test_port_settings_name_every_listener() -> None:
    assert vm_layout.port_settings(vm_layout.GATEWAY) == {"DOCTAG_HTTP_PORT": "8080",
                                                          "DOCTAG_GATEWAY_STATUS_PORT": "8100"}
    assert vm_layout.port_settings(vm_layout.UPLOAD) == {"DOCTAG_HTTP_PORT": "8101", "DOCTAG_GRPC_PORT": "9101"}


def test_unknown_role_is_named() -> None:
    try:
        vm_layout.role("mail")
    except KeyError as exc:
        assert "gateway" in str(exc)
    else:
        raise AssertionError("expected KeyError")
