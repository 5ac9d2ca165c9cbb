"""cloud-init user data per VM template (`infra/cloud-init/<role>.yaml`), generated from vm_layout.

A VM made from a role's template comes up with: the `doctag` system user, the distribution
packages the role needs (from the data centre's own mirror: the VMs have no Internet), the role's
systemd units (the same text as infra/systemd/), and, when the template image carries the role's
bundle in /opt/doctag/bundles, that bundle installed offline. The units are enabled, not started:
`make deploy-<role>` writes the host's env files, certificates and secrets, then starts them.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from . import units, vm_layout

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "infra" / "cloud-init"

BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "openssh-server", "tar")
ROLE_PACKAGES = {
    "db": ("postgresql", "rabbitmq-server", "redis-server"),
    "web": ("nfs-common", "ceph-common"),  # the shared blob store: NFS or CephFS (README)
}


def render(role: vm_layout.VmRole, paths: units.HostPaths | None = None) -> str:
    paths = paths or units.HostPaths()
    root = str(paths.install_root)
    dirs = [str(paths.config_dir), str(paths.state_dir), f"{root}/bundles"]
    if role.name == "web":
        dirs.append(str(paths.blob_dir))
    install = (f'b=$(ls {root}/bundles/doctag-*-{role.name}.tar.gz 2>/dev/null | sort -V | tail -n 1); '
               f'if [ -n "$b" ]; then tar -xzf "$b" -C {root}/bundles '
               f'&& "${{b%.tar.gz}}/install.sh" --prefix {root} && rm -rf "${{b%.tar.gz}}"; '
               f'else echo "no doctag {role.name} bundle in {root}/bundles: make deploy-{role.name} installs it"; fi')
    data: dict[str, object] = {
        "users": ["default", {"name": "doctag", "system": True, "homedir": str(paths.state_dir),
                              "shell": "/usr/sbin/nologin", "lock_passwd": True}],
        # Air-gapped: the packages come from the data centre's mirror configured in the template.
        "package_update": False,
        "package_upgrade": False,
        "packages": [*BASE_PACKAGES, *ROLE_PACKAGES.get(role.name, ())],
        "runcmd": [
            ["install", "-d", "-m", "0755", *dirs],
            ["chown", "doctag:doctag", str(paths.state_dir), *([str(paths.blob_dir)] if role.name == "web" else [])],
            ["chmod", "0750", str(paths.config_dir)],
            ["sh", "-c", install],
            ["systemctl", "daemon-reload"],
            *([["systemctl", "enable", *(units.unit_name(s) for s in role.services)]] if role.services else []),
        ],
    }
    unit_files = [{"path": f"/etc/systemd/system/{name}", "permissions": "0644", "owner": "root:root",
                   "content": text} for name, text in units.render_units(role, paths).items()]
    if unit_files:
        data = {**{k: v for k, v in data.items() if k != "runcmd"}, "write_files": unit_files, "runcmd": data["runcmd"]}
    header = (f"#cloud-config\n# VM template of the doctag {role.name} role ({role.vcpus} vCPU, "
              f"{role.memory_gib} GiB): generated from services/cli/vm_layout.py\n# by services/cli/cloud_init.py; "
              f"do not edit. Then: make deploy-{role.name} HOST=<name> (README, 'Deploying on seven VMs').\n")
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=200)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the unit files) as literal blocks, readable in the file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_all() -> dict[str, str]:
    return {f"{r.name}.yaml": render(r) for r in vm_layout.ROLES}


def write_committed(directory: Path = COMMITTED) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written
