"""The platform's services on the six application hosts, each under its own supervisord.

What a host runs comes from services/cli/vm_layout.py (the services of its VM role, their modules
and ports, the same `python -m <module>` command lines the systemd units run); what it is told
(its own address, its peers' addresses, its certificates and secrets) is written into that host's
own directory, as deploy writes `/etc/doctag` on a VM. Only what a host's role needs is copied
there: the database password of its own roles, the AMQP password of its services, certificates
naming its address for the roles it runs.

systemd cannot run per network namespace (one PID 1 per machine), so each namespace runs one
supervisord with the same command lines and environment as the units; `service_manager:
supervisor` of the deployment does the same on hosts without systemd.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from services.cli import vm_layout
from services.cli.stack import REPO_ROOT, _supervisor_escape, use_https
from services.common import capability, pki
from services.common.auth import ensure_keypair
from tests.hosts.netns import HOSTS, Host, in_ns

DB = next(h for h in HOSTS if h.role == "db")
MODEL = next(h for h in HOSTS if h.role == "model")
GATEWAY = next(h for h in HOSTS if h.role == "gateway")
WEB = tuple(h for h in HOSTS if h.role == "web")
TAGGING = tuple(h for h in HOSTS if h.role == "tagging")
APP_HOSTS = tuple(h for h in HOSTS if h.role != "db")
DB_NAME = "doctag"
AMQP_VHOST = "doctag"
AMQP_PREFIX = "doctag"

# Database login roles per platform service (as `make up` gives them).
DB_ROLES = {"gateway": ("doctag_gateway",), "upload": ("doctag_upload", "doctag_relay"),
            "search": ("doctag_search",), "model-serving": ("doctag_model",),
            "training-worker": ("doctag_training",)}


@dataclass
class Secrets:
    """What the operator's machine generated (db_accounts, amqp_accounts): role -> password file."""

    db: dict[str, Path]
    amqp: dict[str, Path]                 # service role -> password file
    amqp_users: dict[str, str]            # service role -> user name
    redis_password: str


@dataclass
class Platform:
    root: Path                            # the run's temp dir (every host's prefix is under it)
    secrets: Secrets | None = None
    python: str = sys.executable
    processes: dict[str, list[str]] = field(default_factory=dict)

    # -- per-host paths ------------------------------------------------------------
    @property
    def ca_dir(self) -> Path:
        return self.root / "operator" / "pki"

    @property
    def keys_dir(self) -> Path:
        return self.root / "operator" / "keys"

    @property
    def blob_dir(self) -> Path:
        """The shared filesystem both web hosts mount (CephFS/NFS on VMs; one directory here)."""
        return self.root / "shared-blobs"

    def host_dir(self, host: Host) -> Path:
        return self.root / "hosts" / host.name

    def config_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "etc"

    def state_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "state"

    def log_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "log"

    def supervisor_conf(self, host: Host) -> Path:
        return self.host_dir(host) / "run" / "supervisord.conf"

    @property
    def gateway_url(self) -> str:
        return f"http://{GATEWAY.address}:{vm_layout.GATEWAY.http_port}"

    # -- configuration ---------------------------------------------------------------
    def init_operator(self) -> None:
        """The platform CA, the JWT and job-capability keys, and the operator's own client
        certificate (role gateway, on the bridge address) for probing services' ports."""
        pki.init_ca(self.ca_dir)
        ensure_keypair(self.keys_dir)
        capability.ensure_keypair(self.keys_dir)
        pki.issue(self.ca_dir, "gateway", hosts=["operator"], ips=["10.77.0.1"],
                  out_dir=self.root / "operator" / "client")

    def configure(self, host: Host) -> None:
        """Writes one host's configuration: certificates, keys, secrets, gateway config, supervisord."""
        role = vm_layout.role(host.role)
        etc = self.config_dir(host)
        (etc / "keys").mkdir(parents=True, exist_ok=True)
        for service in role.services:
            pki.issue(self.ca_dir, service.name, hosts=[host.name], ips=[host.address], out_dir=etc / "pki")
        keys = ["jwt_public.pem", capability.PUBLIC_NAME]
        if host.role == "gateway":
            keys.append("jwt_private.pem")
        if host.role == "web":
            keys.append(capability.PRIVATE_NAME)
        for name in keys:
            shutil.copy2(self.keys_dir / name, etc / "keys" / name)
        if host.role == "gateway":
            self._write_gateway_config(etc / "kong.yml")
        self.state_dir(host).mkdir(parents=True, exist_ok=True)
        self.log_dir(host).mkdir(parents=True, exist_ok=True)
        self._write_supervisor_config(host)

    def _secret_copy(self, host: Host, kind: str, name: str, source: Path) -> Path:
        target = self.config_dir(host) / "secrets" / kind / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent.parent, 0o700)
        shutil.copy2(source, target)
        os.chmod(target, 0o600)
        return target

    def service_env(self, host: Host, service: vm_layout.Service) -> dict[str, str]:
        etc, state = self.config_dir(host), self.state_dir(host)
        env = {
            "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1",
            "DOCTAG_STATE_DIR": str(state), "DOCTAG_TLS_DIR": str(etc / "pki"),
            "DOCTAG_HTTP_HOST": host.address, "DOCTAG_GRPC_HOST": host.address,
            "DOCTAG_HTTP_PORT": str(service.http_port),
            "DOCTAG_JWT_PUBLIC_KEY_FILE": str(etc / "keys" / "jwt_public.pem"),
            "DOCTAG_JOB_CAPABILITY_PUBLIC_KEY_FILE": str(etc / "keys" / capability.PUBLIC_NAME),
            "DOCTAG_DB_HOST": DB.address, "DOCTAG_DB_PORT": str(vm_layout.POSTGRES_PORT), "DOCTAG_DB_NAME": DB_NAME,
            "DOCTAG_AMQP_PREFIX": AMQP_PREFIX, "DOCTAG_TORCH_THREADS": "1", "DOCTAG_RELAY_POLL_SECONDS": "0.5",
            "DOCTAG_ONNX_CACHE_DIR": str(REPO_ROOT / "var" / "onnx-cache"),
            "DOCTAG_SERVICE_INSTANCE": f"{service.name}@{host.name}",
            "DOCTAG_MODEL_GRPC_TARGET": f"{MODEL.address}:{vm_layout.MODEL_SERVING.grpc_port}",
        }
        if service.grpc_port is not None:
            env["DOCTAG_GRPC_PORT"] = str(service.grpc_port)
        if service.name == "gateway":
            env.update({"DOCTAG_UPSTREAM_TLS": "true", "DOCTAG_GATEWAY_CONFIG": str(etc / "kong.yml"),
                        "DOCTAG_GATEWAY_STATUS_PORT": str(service.status_port),
                        # The status listener (/metrics, /readyz) on the host's address, over
                        # mutual TLS: platform certificates only (as doctag deploy sets it).
                        "DOCTAG_GATEWAY_STATUS_TLS": "true",
                        "DOCTAG_JWT_PRIVATE_KEY_FILE": str(etc / "keys" / "jwt_private.pem"),
                        "DOCTAG_GATEWAY_REDIS_URL": self._redis_url()})
        else:
            env["DOCTAG_HTTP_TLS"] = "true"
        if service.name == "upload":
            env.update({"DOCTAG_BLOB_DIR": str(self.blob_dir),
                        "DOCTAG_JOB_CAPABILITY_PRIVATE_KEY_FILE": str(etc / "keys" / capability.PRIVATE_NAME)})
        if service.name == "web":
            env["DOCTAG_WEB_API_URL"] = self.gateway_url
        if service.name == "tagging-worker":
            env["DOCTAG_DOCUMENTS_GRPC_TARGET"] = ",".join(
                f"{w.address}:{vm_layout.UPLOAD.grpc_port}" for w in WEB)
        if service.name == "model-serving":
            env["DOCTAG_MODEL_STORE"] = str(state / "models")
        env.update(self._account_env(host, service.name))
        return env

    def _redis_url(self) -> str:
        assert self.secrets is not None
        return f"redis://:{self.secrets.redis_password}@{DB.address}:{vm_layout.REDIS_PORT}/0"

    def _account_env(self, host: Host, service: str) -> dict[str, str]:
        if self.secrets is None:
            return {}
        env: dict[str, str] = {}
        roles = DB_ROLES.get(service, ())
        if roles:
            env["DOCTAG_DB_PASSWORD_FILE"] = str(self._secret_copy(host, "db", roles[0], self.secrets.db[roles[0]]))
        if "doctag_relay" in roles:
            env["DOCTAG_RELAY_DB_PASSWORD_FILE"] = str(
                self._secret_copy(host, "db", "doctag_relay", self.secrets.db["doctag_relay"]))
        if service in self.secrets.amqp:
            user = self.secrets.amqp_users[service]
            env.update({"DOCTAG_AMQP_URL": f"amqp://{user}@{DB.address}:{vm_layout.RABBITMQ_PORT}/{AMQP_VHOST}",
                        "DOCTAG_AMQP_PASSWORD_FILE": str(self._secret_copy(host, "amqp", service,
                                                                           self.secrets.amqp[service])),
                        "DOCTAG_AMQP_DECLARE_TOPOLOGY": "false"})
        return env

    def _write_gateway_config(self, path: Path) -> None:
        template = REPO_ROOT / "gateway" / "kong.yml"
        config: dict[str, Any] = yaml.safe_load(template.read_text(encoding="utf-8"))
        targets = {
            "upload-upstream": [f"{w.address}:{vm_layout.UPLOAD.http_port}" for w in WEB],
            "search-upstream": [f"{w.address}:{vm_layout.SEARCH.http_port}" for w in WEB],
            "model-serving-upstream": [f"{MODEL.address}:{vm_layout.MODEL_SERVING.http_port}"],
            "web-upstream": [f"{w.address}:{vm_layout.WEB.http_port}" for w in WEB],
        }
        for upstream in config.get("upstreams", []):
            if upstream["name"] in targets:
                upstream["targets"] = [{"target": t, "weight": 100} for t in targets[upstream["name"]]]
        use_https(config, set(targets))
        assert self.secrets is not None
        for plugin in config.get("plugins", []):
            if plugin.get("name") == "rate-limiting" and plugin["config"].get("policy") == "redis":
                plugin["config"]["redis"] = {"host": DB.address, "port": vm_layout.REDIS_PORT,
                                             "password": self.secrets.redis_password}
        path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
        os.chmod(path, 0o600)

    def _write_supervisor_config(self, host: Host) -> None:
        run, log = self.supervisor_conf(host).parent, self.log_dir(host)
        run.mkdir(parents=True, exist_ok=True)
        lines = [
            f"; {host.name}: the command lines of the doctag-<service>.service units", "[unix_http_server]",
            f"file={run / 'supervisor.sock'}", "chmod=0700", "", "[supervisord]",
            f"logfile={log / 'supervisord.log'}", f"pidfile={run / 'supervisord.pid'}", f"directory={REPO_ROOT}",
            f"childlogdir={log}", "", "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}", "",
        ]
        for service in vm_layout.role(host.role).services:
            env = self.service_env(host, service)
            env_line = ",".join(f'{k}="{_supervisor_escape(v)}"' for k, v in env.items())
            lines += [f"[program:{service.name}]", f"command={self.python} -m {service.module}",
                      f"environment={env_line}", "autostart=true", "autorestart=true", "startsecs=3",
                      "startretries=100", "stopsignal=TERM", "stopwaitsecs=20", "stopasgroup=true",
                      "killasgroup=true", f"stdout_logfile={log / (service.name + '.log')}", "redirect_stderr=true",
                      ""]
        conf = self.supervisor_conf(host)
        conf.write_text("\n".join(lines), encoding="utf-8")
        os.chmod(conf, 0o600)

    # -- process control ---------------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(Path(self.python).parent / name)

    def start(self, host: Host) -> None:
        """Starts the host's supervisord inside its namespace (it starts the host's services)."""
        # A clean environment: the host gets only what its configuration says, nothing of the test's.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(self.host_dir(host))}
        subprocess.run(in_ns(host, [self._bin("supervisord"), "-c", str(self.supervisor_conf(host))]),
                       check=True, timeout=60, capture_output=True, env=env)

    def supervisorctl(self, host: Host, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(in_ns(host, [self._bin("supervisorctl"), "-c", str(self.supervisor_conf(host)), *args]),
                              capture_output=True, text=True, timeout=120)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client with the operator's client certificate (role gateway) for services' own ports."""
        from services.common.tls import ReloadingSSLContext, TlsFiles

        d = self.root / "operator" / "client"
        tls = ReloadingSSLContext(TlsFiles(d / "ca.crt", d / "gateway.crt", d / "gateway.key"), server=False)
        return httpx.Client(verify=tls.context, **kwargs)

    def readiness_urls(self, hosts: tuple[Host, ...] = APP_HOSTS) -> dict[str, str]:
        urls = {}
        for host in hosts:
            for service in vm_layout.role(host.role).services:
                if service.name != "gateway":
                    urls[f"{service.name}@{host.name}"] = f"https://{host.address}:{service.http_port}/readyz"
        return urls

    def gateway_status_url(self, path: str) -> str:
        return f"https://{GATEWAY.address}:{vm_layout.GATEWAY.status_port}{path}"

    def gateway_ready(self) -> bool:
        """The gateway's status listener answers platform certificates only (the operator's here)."""
        try:
            with self.client(timeout=3) as client:
                return client.get(self.gateway_status_url("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def gateway_metrics(self) -> str:
        with self.client(timeout=5) as client:
            return client.get(self.gateway_status_url("/metrics")).text

    def wait_ready(self, hosts: tuple[Host, ...] = APP_HOSTS, timeout: float = 400) -> float:
        """Until every service of `hosts` answers /readyz; returns the seconds it took."""
        start = time.monotonic()
        pending = self.readiness_urls(hosts)
        gateway_pending = GATEWAY in hosts
        with self.client(timeout=3) as client:
            while (pending or gateway_pending) and time.monotonic() - start < timeout:
                for name, url in list(pending.items()):
                    try:
                        if client.get(url).status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                if gateway_pending and not pending:
                    gateway_pending = not self.gateway_ready()
                if pending or gateway_pending:
                    time.sleep(1)  # poll interval
        if pending or gateway_pending:
            names = [*pending, *(["gateway@gateway"] if gateway_pending else [])]
            raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(names)}\n" + self.log_tails(names))
        return time.monotonic() - start

    def log_tails(self, names: list[str], lines: int = 25) -> str:
        out = []
        for name in names:
            service, _, host = name.partition("@")
            path = self.root / "hosts" / host / "log" / f"{service}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            out.append(f"--- {name}:\n" + "\n".join(text))
        return "\n".join(out)


class DeployedPlatform(Platform):
    """The application hosts as `doctag deploy` leaves them: each role's offline bundle installed by
    its install.sh into the host's own prefix (`<host>/opt/<version>`, `current`), the host's files
    rendered by deploy in `<host>/etc`, the units' command lines under the supervisord deploy
    configured (`service_manager: supervisor`), state and logs in `<host>/var`."""

    @property
    def state_root(self) -> Path:
        return self.root / "operator-state"

    @property
    def ca_dir(self) -> Path:
        return self.state_root / "pki"

    def install_root(self, host: Host) -> Path:
        return self.host_dir(host) / "opt"

    def config_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "etc"

    def state_dir(self, host: Host) -> Path:
        return self.host_dir(host) / "var"

    def log_dir(self, host: Host) -> Path:
        return self.state_dir(host) / "log"

    def supervisor_conf(self, host: Host) -> Path:
        return self.config_dir(host) / "supervisord.conf"

    def inventory(self) -> str:
        """The seven test hosts as an inventory (the contract's format), every path under the run's dir."""
        hosts = []
        for i, host in enumerate(HOSTS):
            hosts.append({"name": host.name, "role": host.role, "address": host.address,
                          "hypervisor": f"hv-{'ab'[i % 2]}" if host.role in ("web", "tagging") else "hv-c",
                          "install_root": str(self.install_root(host)), "config_dir": str(self.config_dir(host)),
                          "state_dir": str(self.state_dir(host))})
        return yaml.safe_dump({"version": 1, "deployment": "dt-hosts",
                               "defaults": {"ssh_user": "root", "service_manager": "supervisor",
                                            "service_user": None, "blob_dir": str(self.blob_dir)},
                               "hosts": hosts}, sort_keys=False)

    def start(self, host: Host) -> None:
        """Starts the host's supervisord again (after the host was killed), from its installed venv."""
        venv = self.install_root(host) / "current" / "venv" / "bin"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(self.host_dir(host))}
        subprocess.run(in_ns(host, [str(venv / "supervisord"), "-c", str(self.supervisor_conf(host))]),
                       check=True, timeout=60, capture_output=True, env=env)

    def client(self, **kwargs: Any) -> httpx.Client:
        from services.common.tls import ReloadingSSLContext, TlsFiles

        d = self.state_root / "operator-pki"
        tls = ReloadingSSLContext(TlsFiles(d / "ca.crt", d / "gateway.crt", d / "gateway.key"), server=False)
        return httpx.Client(verify=tls.context, **kwargs)

    def log_tails(self, names: list[str], lines: int = 25) -> str:
        out = []
        for name in names:
            service, _, host = name.partition("@")
            path = self.root / "hosts" / host / "var" / "log" / f"{service}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no log)"]
            out.append(f"--- {name}:\n" + "\n".join(text))
        return "\n".join(out)
