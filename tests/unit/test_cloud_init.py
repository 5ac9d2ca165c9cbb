"""cloud-init user data per VM template: generated from vm_layout, committed, valid for cloud-init."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.cli import cloud_init, units, vm_layout

CLOUD_INIT = shutil.which("cloud-init")
needs_cloud_init = pytest.mark.skipif(CLOUD_INIT is None, reason="needs Debian's cloud-init (`make deploy-tools`)")


def test_committed_files_are_the_generator_output() -> None:
    committed = {p.name: p.read_text(encoding="utf-8") for p in cloud_init.COMMITTED.glob("*.yaml")}
    assert committed == cloud_init.render_all(), "infra/cloud-init/ is stale: run `doctag release units`"


def test_each_template_has_the_user_its_packages_and_exactly_its_units() -> None:
    for r in vm_layout.ROLES:
        data = yaml.safe_load(cloud_init.render(r))
        assert any(isinstance(u, dict) and u["name"] == "doctag" and u["system"] for u in data["users"])
        assert "python3-venv" in data["packages"]
        written = {f["path"]: f["content"] for f in data.get("write_files", [])}
        assert written == {f"/etc/systemd/system/{n}": t for n, t in units.render_units(r, units.HostPaths()).items()}
        install = next(c for c in data["runcmd"] if c[0] == "sh")[2]
        assert f"doctag-*-{r.name}.tar.gz" in install and "install.sh\" --prefix /opt/doctag" in install
    assert {"postgresql", "rabbitmq-server", "redis-server"} <= set(yaml.safe_load(
        cloud_init.render(vm_layout.role("db")))["packages"])


@needs_cloud_init
def test_cloud_init_schema_accepts_every_template() -> None:
    assert CLOUD_INIT
    for path in sorted(cloud_init.COMMITTED.glob("*.yaml")):
        result = subprocess.run([CLOUD_INIT, "schema", "--config-file", str(path)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "Valid cloud-config" in result.stdout, (path, result.stdout, result.stderr)


@needs_cloud_init
def test_cloud_init_schema_rejects_a_broken_template(tmp_path: Path) -> None:
    assert CLOUD_INIT
    data = yaml.safe_load(cloud_init.render(vm_layout.role("web")))
    data["packages"] = "python3"
    data["write_files"][0]["permissions"] = 644
    broken = tmp_path / "web.yaml"
    broken.write_text("#cloud-config\n" + yaml.safe_dump(data))
    result = subprocess.run([CLOUD_INIT, "schema", "--config-file", str(broken)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "packages" in result.stderr + result.stdout
