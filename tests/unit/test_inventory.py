"""The deployment inventory: defaults, per-host overrides, errors that name the entry, anti-affinity."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli import vm_layout
from services.cli.inventory import InventoryError, load_inventory, parse_inventory

EXAMPLE = Path(__file__).resolve().parents[2] / "infra" / "inventory.example.yaml"


def _data() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def test_example_is_the_seven_vm_layout_in_dependency_order() -> None:
    inv = load_inventory(EXAMPLE)
    assert inv.deployment == "example"
    assert len(inv.hosts) == vm_layout.total_vms()
    for r in vm_layout.ROLES:
        assert len(inv.of_role(r.name)) == r.count
    order = [h.role for h in inv.in_order()]
    assert order == sorted(order, key=[r.name for r in vm_layout.ROLES].index)
    assert order[0] == "db" and order[-1] == "tagging"
    db = inv.one("db")
    assert (db.address, db.ssh_host, db.ssh_user, db.ssh_port) == ("10.20.0.10", "10.20.0.10", "root", 22)
    assert str(db.install_root) == "/opt/doctag" and db.service_manager == "systemd"


def test_a_host_overrides_the_defaults() -> None:
    data = _data()
    data["hosts"][2].update(install_root="/srv/dt", ssh_host="192.168.1.5", ssh_port=2222,
                            service_manager="supervisor", service_user=None)
    web1 = parse_inventory(data, "inv.yaml").host("web-1")
    assert (str(web1.install_root), web1.ssh_host, web1.ssh_port) == ("/srv/dt", "192.168.1.5", 2222)
    assert web1.service_manager == "supervisor" and web1.service_user is None
    assert parse_inventory(data, "inv.yaml").host("web-2").service_user == "doctag"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["hosts"][3].update(address="10.20.0.300"), "hosts[3].address: '10.20.0.300' is not an IP"),
    (lambda d: d["hosts"][1].update(role="models"), "hosts[1].role: unknown VM role 'models'"),
    (lambda d: d["hosts"][4].update(name="web-1"), "hosts[4].name: 'web-1' is already used by hosts[2]"),
    (lambda d: d["hosts"][5].update(address="10.20.0.10"), "hosts[5].address: '10.20.0.10' is already used"),
    (lambda d: d["defaults"].update(install_root="opt/doctag"), "defaults.install_root: must be an absolute"),
    (lambda d: d["defaults"].update(service_manager="runit"), "defaults.service_manager: Input should be"),
    (lambda d: d["hosts"][0].update(colour="red"), "hosts[0].colour: Extra inputs are not permitted"),
    (lambda d: d["hosts"][6].update(config_dir="etc"), "hosts[6].config_dir: must be an absolute path"),
    (lambda d: d.update(version=2), "version: Input should be 1"),
])
def test_errors_name_the_file_and_the_entry(change, expected: str) -> None:
    data = _data()
    change(data)
    with pytest.raises(InventoryError) as err:
        parse_inventory(data, "site.yaml")
    assert str(err.value).startswith("site.yaml: ")
    assert expected in str(err.value)


def test_two_hosts_of_one_role_on_one_hypervisor_are_refused_naming_both() -> None:
    data = _data()
    data["hosts"][3]["hypervisor"] = "hv-a"  # web-2 next to web-1
    with pytest.raises(InventoryError) as err:
        parse_inventory(data, "site.yaml")
    assert "hosts web-1 and web-2 (role web) are both on hypervisor hv-a" in str(err.value)
    # different roles on one hypervisor are fine, and so are hosts without a hypervisor
    data = _data()
    for h in data["hosts"]:
        h.pop("hypervisor")
    assert len(parse_inventory(data).hosts) == 7


def test_unknown_host_and_missing_role_are_named(tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLE)
    with pytest.raises(InventoryError, match="no host 'web-3'"):
        inv.host("web-3")
    data = _data()
    data["hosts"] = [h for h in data["hosts"] if h["role"] != "model"]
    with pytest.raises(InventoryError, match="no host of role 'model'"):
        parse_inventory(data, "x.yaml").one("model")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nhosts: [\n", encoding="utf-8")
    with pytest.raises(InventoryError, match=r"bad\.yaml: not valid YAML"):
        load_inventory(bad)
    with pytest.raises(InventoryError, match="cannot read the inventory"):
        load_inventory(tmp_path / "missing.yaml")
