"""The inventory of a seven-VM deployment: which host runs which VM role, at which address.

`doctag deploy` reads it to know where to copy each role's bundle and what to tell each host
about its peers (the db host's address, every web host's upload gRPC port, ...). Example:
`infra/inventory.example.yaml`. Every host inherits `defaults` and may override any of them.
Errors name the file and the entry (`hosts[2].address: ...`), like the gateway's kong.yml does.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import vm_layout

_HOST_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_DEPLOYMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InventoryError(ValueError):
    """An inventory that cannot be deployed; the message names the file and the bad entry."""


class HostSettings(BaseModel):
    """What every host inherits from `defaults` (and may override)."""

    model_config = ConfigDict(extra="forbid")

    ssh_user: str = "root"
    ssh_port: int = Field(22, ge=1, le=65535)
    install_root: Path = Path("/opt/doctag")
    config_dir: Path = Path("/etc/doctag")
    state_dir: Path = Path("/var/lib/doctag")
    service_manager: Literal["systemd", "supervisor"] = "systemd"
    blob_dir: Path = Path("/srv/doctag-blobs")
    # The account the services run as (systemd User=, supervisor user=); null: the deploying user
    # (hosts where the installer is not root, e.g. the multi-host test).
    service_user: str | None = "doctag"
    # Extra DOCTAG_* variables for every service of the host (a host's entries win over the defaults').
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("install_root", "config_dir", "state_dir", "blob_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, not {str(value)!r}")
        return value


class _HostEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_HOST_NAME)
    role: str
    address: str
    hypervisor: str | None = None
    ssh_host: str | None = None  # SSH goes here when it is not the service address
    ssh_user: str | None = None
    ssh_port: int | None = Field(None, ge=1, le=65535)
    install_root: Path | None = None
    config_dir: Path | None = None
    state_dir: Path | None = None
    service_manager: Literal["systemd", "supervisor"] | None = None
    blob_dir: Path | None = None
    service_user: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        known = [r.name for r in vm_layout.ROLES]
        if value not in known:
            raise ValueError(f"unknown VM role {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (services listen on it and certificates name it)"
                             ) from None


class _InventoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    # Names the operator's state for this deployment: var/deploy/<deployment>/ (certificates,
    # secrets); default: the inventory file's name without its extension.
    deployment: str | None = None
    defaults: HostSettings = Field(default_factory=HostSettings)
    hosts: list[_HostEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> _InventoryFile:
        for attr in ("name", "address"):
            seen: dict[str, int] = {}
            for i, host in enumerate(self.hosts):
                value = getattr(host, attr)
                if value in seen:
                    raise ValueError(f"hosts[{i}].{attr}: {value!r} is already used by hosts[{seen[value]}]")
                seen[value] = i
        return self


class Host(BaseModel):
    """One host with the defaults applied."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str
    address: str
    hypervisor: str | None
    ssh_host: str
    ssh_user: str
    ssh_port: int
    install_root: Path
    config_dir: Path
    state_dir: Path
    service_manager: Literal["systemd", "supervisor"]
    blob_dir: Path
    service_user: str | None
    env: dict[str, str]

    @property
    def vm_role(self) -> vm_layout.VmRole:
        return vm_layout.role(self.role)


class Inventory(BaseModel):
    model_config = ConfigDict(frozen=True)

    deployment: str
    source: str
    hosts: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise InventoryError(f"{self.source}: no host {name!r}; hosts: {', '.join(h.name for h in self.hosts)}")

    def of_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts if h.role == role]

    def one(self, role: str) -> Host:
        """The host of a role that has exactly one (db, model, gateway); InventoryError otherwise."""
        hosts = self.of_role(role)
        if not hosts:
            raise InventoryError(f"{self.source}: no host of role {role!r}, which the deployment needs")
        if len(hosts) > 1 and role in ("db", "gateway"):
            raise InventoryError(f"{self.source}: {len(hosts)} hosts of role {role!r}; the layout has one")
        return hosts[0]

    def in_order(self) -> Iterator[Host]:
        """Hosts in dependency order (vm_layout.ROLES: db first, tagging last)."""
        for r in vm_layout.ROLES:
            yield from self.of_role(r.name)


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ""
        for part in err.get("loc", ()):
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return f"{source}: invalid inventory:\n" + "\n".join(lines)


def anti_affinity_violations(hosts: tuple[Host, ...] | list[Host]) -> list[str]:
    """Two hosts of one role on one hypervisor: one hypervisor failure would take both."""
    problems = []
    first: dict[tuple[str, str], str] = {}
    for h in hosts:
        if h.hypervisor is None:
            continue
        key = (h.role, h.hypervisor)
        if key in first:
            problems.append(f"hosts {first[key]} and {h.name} (role {h.role}) are both on hypervisor "
                            f"{h.hypervisor}: put them on different hypervisors")
        else:
            first[key] = h.name
    return problems


def parse_inventory(data: Any, source: str = "<inventory>") -> Inventory:
    if not isinstance(data, dict):
        raise InventoryError(f"{source}: the top level must be a mapping with version: 1 and hosts")
    try:
        raw = _InventoryFile.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(_format_errors(source, exc)) from None
    d = raw.defaults
    hosts = tuple(
        Host(name=e.name, role=e.role, address=e.address, hypervisor=e.hypervisor,
             ssh_host=e.ssh_host or e.address, ssh_user=e.ssh_user or d.ssh_user,
             ssh_port=e.ssh_port or d.ssh_port, install_root=e.install_root or d.install_root,
             config_dir=e.config_dir or d.config_dir, state_dir=e.state_dir or d.state_dir,
             service_manager=e.service_manager or d.service_manager, blob_dir=e.blob_dir or d.blob_dir,
             service_user=e.service_user if "service_user" in e.model_fields_set else d.service_user,
             env={**d.env, **e.env})
        for e in raw.hosts)
    for i, entry in enumerate(raw.hosts):
        for field in ("install_root", "config_dir", "state_dir", "blob_dir"):
            value = getattr(entry, field)
            if value is not None and not value.is_absolute():
                raise InventoryError(f"{source}: invalid inventory:\n  hosts[{i}].{field}: must be an absolute "
                                     f"path, not {str(value)!r}")
    problems = anti_affinity_violations(hosts)
    if problems:
        raise InventoryError(f"{source}: anti-affinity:\n" + "\n".join(f"  {p}" for p in problems))
    deployment = raw.deployment or Path(source).name.split(".")[0]
    if not _DEPLOYMENT.fullmatch(deployment):
        raise InventoryError(f"{source}: deployment: {deployment!r}: lower-case letters, digits, '-' and '_' only")
    return Inventory(deployment=deployment, source=source, hosts=hosts)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Reads and validates an inventory file; InventoryError names the file and every bad entry."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML: {exc}") from None
    return parse_inventory(data, str(path))
