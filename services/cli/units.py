"""How a host runs its role's services: systemd units, or the same command lines under supervisord.

Both are generated from `vm_layout` (module, memory limit, what a service writes) and a host's
paths (the inventory's install_root, config_dir, state_dir, blob_dir), so a unit and a supervisor
program start exactly the same process: `<install_root>/current/venv/bin/python -m <module>` with
the variables of `<config_dir>/<service>.env`. `infra/systemd/` holds the units for the default
paths (a test keeps them equal to this generator's output).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from . import vm_layout

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_UNITS = REPO_ROOT / "infra" / "systemd"
HEADER = "# generated from services/cli/vm_layout.py by services/cli/units.py; do not edit"


class EnvFileError(ValueError):
    """A value that an EnvironmentFile cannot carry (newline, single quote)."""


@dataclass(frozen=True)
class HostPaths:
    """Where things are on a host (the inventory's defaults unless a host overrides them)."""

    install_root: Path = Path("/opt/doctag")
    config_dir: Path = Path("/etc/doctag")
    state_dir: Path = Path("/var/lib/doctag")
    blob_dir: Path = Path("/srv/doctag-blobs")
    service_user: str | None = "doctag"

    @property
    def python(self) -> Path:
        return self.install_root / "current" / "venv" / "bin" / "python"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def supervisor_conf(self) -> Path:
        return self.config_dir / "supervisord.conf"

    def env_file(self, service: vm_layout.Service) -> Path:
        return self.config_dir / f"{service.name}.env"

    def writable(self, service: vm_layout.Service) -> list[Path]:
        where = {"blobs": self.blob_dir, "state": self.state_dir}
        return [where[w] for w in service.writes]


def unit_name(service: vm_layout.Service) -> str:
    return f"doctag-{service.name}.service"


def exec_start(service: vm_layout.Service, paths: HostPaths) -> list[str]:
    return [str(paths.python), "-m", service.module]


def render_unit(service: vm_layout.Service, paths: HostPaths) -> str:
    role = vm_layout.role_of_service(service.name)
    lines = [
        HEADER,
        "[Unit]",
        f"Description=doctag {service.name} ({role.name} VM role)",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
    ]
    if paths.service_user:
        lines += [f"User={paths.service_user}", f"Group={paths.service_user}"]
    lines += [
        f"EnvironmentFile={paths.env_file(service)}",
        f"ExecStart={shlex.join(exec_start(service, paths))}",
        "WorkingDirectory=/",
        "Restart=on-failure",
        "RestartSec=2s",
        "TimeoutStopSec=30s",
        "KillMode=mixed",
        f"MemoryMax={service.memory_max_mib}M",
        *([f"CPUWeight={service.cpu_weight}"] if service.cpu_weight != 100 else []),
        *([f"Nice={service.nice}"] if service.nice else []),
        "LimitNOFILE=65536",
        "UMask=0027",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ]
    writable = paths.writable(service)
    if writable:
        lines.append("ReadWritePaths=" + " ".join(str(p) for p in writable))
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_units(role: vm_layout.VmRole, paths: HostPaths) -> dict[str, str]:
    """File name → unit text for every service of the role."""
    return {unit_name(s): render_unit(s, paths) for s in role.services}


def render_all_units(paths: HostPaths | None = None) -> dict[str, str]:
    paths = paths or HostPaths()
    units: dict[str, str] = {}
    for r in vm_layout.ROLES:
        units.update(render_units(r, paths))
    return units


def write_committed(directory: Path = COMMITTED_UNITS) -> list[Path]:
    """Writes the units for the default paths (what infra/systemd/ holds)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all_units().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


# -- environment files -------------------------------------------------------------------------
def render_env_file(env: dict[str, str]) -> str:
    """KEY='value' lines: read alike by systemd's EnvironmentFile=, a POSIX shell and `parse_env_file`
    (single quotes keep JSON values and `$` literal)."""
    lines = []
    for key, value in env.items():
        if not key.replace("_", "").isalnum() or not key[0].isalpha():
            raise EnvFileError(f"{key!r} is not a variable name")
        if "'" in value or "\n" in value or "\\" in value:
            raise EnvFileError(f"{key}: an environment file value cannot hold a quote, backslash or newline")
        lines.append(f"{key}='{value}'")
    return "\n".join(lines) + "\n"


def parse_env_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


# -- supervisor mode ---------------------------------------------------------------------------
def _supervisor_value(value: str) -> str:
    """A value quoted for supervisord's `environment=`: its parser (shlex) takes no backslash-escaped
    quote inside double quotes, so a value holding `"` (JSON) goes in single quotes (env files
    already refuse single quotes); `%` is doubled for its interpolation."""
    value = value.replace("%", "%%")
    return f"'{value}'" if '"' in value else f'"{value}"'


def render_supervisor(role: vm_layout.VmRole, paths: HostPaths, envs: dict[str, dict[str, str]]) -> str:
    """supervisord.conf running the role's services with the units' command lines; `envs` is service
    name → the variables of its env file (the same files systemd would read)."""
    run, log = paths.run_dir, paths.log_dir
    lines = [
        HEADER.replace("; do not edit", " (supervisor mode); do not edit").replace("#", ";", 1),
        "[unix_http_server]", f"file={run / 'supervisor.sock'}", "chmod=0700", "",
        "[supervisord]", f"logfile={log / 'supervisord.log'}", f"pidfile={run / 'supervisord.pid'}",
        "directory=/", f"childlogdir={log}", "logfile_maxbytes=10MB", "logfile_backups=3", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}", "",
    ]
    for s in role.services:
        env = envs.get(s.name, {})
        lines += [f"[program:{s.name}]", f"command={shlex.join(exec_start(s, paths))}"]
        if env:
            lines.append("environment=" + ",".join(f"{k}={_supervisor_value(v)}" for k, v in env.items()))
        if paths.service_user:
            lines.append(f"user={paths.service_user}")
        lines += ["autostart=true", "autorestart=unexpected", "startsecs=3", "startretries=5",
                  "stopsignal=TERM", "stopwaitsecs=30", "stopasgroup=true", "killasgroup=true",
                  f"stdout_logfile={log / (s.name + '.log')}", "redirect_stderr=true",
                  "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=3", ""]
    return "\n".join(lines)
