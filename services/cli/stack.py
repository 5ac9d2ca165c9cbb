"""The whole platform on one machine as local processes, managed by supervisor.

The seven-VM layout in miniature: gateway x1; web role: web (UI) x2, upload x2, search x2;
tagging-worker x2; model-serving x1. `up` writes a supervisord config and a
gateway config (kong.yml with this layout's ports) under the state directory,
starts supervisord (which daemonises and restarts crashed services), and waits
until every service answers /readyz. `down` stops exactly what `up` started.
The end-to-end tests use the same code with free ports and their own state dir.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GATEWAY_CONFIG = REPO_ROOT / "gateway" / "kong.yml"


@dataclass
class Program:
    name: str
    module: str
    env: dict[str, str]
    ready_port: int  # HTTP port answering /readyz
    priority: int

    @property
    def role(self) -> str:
        """The service role (and certificate) of the program: its name without the replica number."""
        return self.name.rstrip("0123456789").rstrip("-")


@dataclass(frozen=True)
class ServiceAccounts:
    """Each service's own database and broker credentials (files, 0600), set up by `make up`."""

    db_password_files: dict[str, Path]            # PostgreSQL role -> password file
    amqp_urls: dict[str, str] | None = None       # service role -> URL without its password
    amqp_password_files: dict[str, Path] | None = None

    def env(self, role: str) -> dict[str, str]:
        """The DOCTAG_* variables that give one service (by role) its own credentials."""
        db_roles = {"gateway": "doctag_gateway", "upload": "doctag_upload", "search": "doctag_search",
                    "model-serving": "doctag_model", "training-worker": "doctag_training"}
        env: dict[str, str] = {}
        if role in db_roles and db_roles[role] in self.db_password_files:
            env["DOCTAG_DB_PASSWORD_FILE"] = str(self.db_password_files[db_roles[role]].resolve())
        if role == "upload" and "doctag_relay" in self.db_password_files:
            env["DOCTAG_RELAY_DB_PASSWORD_FILE"] = str(self.db_password_files["doctag_relay"].resolve())
        if self.amqp_urls and self.amqp_password_files and role in self.amqp_urls:
            env.update({"DOCTAG_AMQP_URL": self.amqp_urls[role],
                        "DOCTAG_AMQP_PASSWORD_FILE": str(self.amqp_password_files[role].resolve()),
                        "DOCTAG_AMQP_DECLARE_TOPOLOGY": "false"})
        return env


@dataclass
class StackLayout:
    state_dir: Path
    gateway_port: int = 8080
    # The gateway's status listener (/healthz, /readyz, /metrics), separate from the proxy port.
    gateway_status_port: int = 8100
    upload_ports: list[tuple[int, int]] = field(default_factory=lambda: [(8101, 9101), (8102, 9102)])
    search_ports: list[tuple[int, int]] = field(default_factory=lambda: [(8111, 9111), (8112, 9112)])
    model_ports: tuple[int, int] = (8121, 9121)
    worker_ports: list[int] = field(default_factory=lambda: [8131, 8132])
    # The training worker (model role, lower priority: its runs are children at nice 10).
    training_port: int = 8151
    web_ports: list[int] = field(default_factory=lambda: [8141, 8142])
    host: str = "127.0.0.1"
    # Extra DOCTAG_* variables for every process (database name, AMQP prefix, ...).
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    # The gateway configuration this layout's kong.yml is made from (benchmarks raise its size limits).
    gateway_template: Path = DEFAULT_GATEWAY_CONFIG
    # HTTP between the gateway and the services over mutual TLS (the services' ports need a client
    # certificate of the platform CA; the gateway's own port stays plain HTTP for API clients).
    http_tls: bool = True
    # Per-service database and broker credentials (`make up`); None: every service uses the
    # environment's DOCTAG_DB_* and DOCTAG_AMQP_URL (tests, benchmarks).
    accounts: ServiceAccounts | None = None
    # Program name -> CPU list (`taskset -c` syntax, e.g. "1" or "0-3"); programs not named run
    # anywhere. Benchmarks use it to give model-serving its own CPUs, as its own host would.
    cpu_affinity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def with_free_ports(cls, state_dir: Path, env: dict[str, str] | None = None) -> StackLayout:
        ports = free_ports(17)
        return cls(state_dir=state_dir, gateway_port=ports[0],
                   upload_ports=[(ports[1], ports[2]), (ports[3], ports[4])],
                   search_ports=[(ports[5], ports[6]), (ports[7], ports[8])],
                   model_ports=(ports[9], ports[10]), worker_ports=[ports[11], ports[12]],
                   gateway_status_port=ports[13], web_ports=[ports[14], ports[15]], training_port=ports[16],
                   env=dict(env or {}))

    # -- paths -----------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def supervisor_conf(self) -> Path:
        return self.run_dir / "supervisord.conf"

    @property
    def gateway_conf(self) -> Path:
        return self.run_dir / "kong.yml"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def gateway_status_url(self) -> str:
        return f"http://{self.host}:{self.gateway_status_port}"

    # -- programs ----------------------------------------------------------------
    def programs(self) -> list[Program]:
        h = self.host
        upload_grpc = ",".join(f"{h}:{g}" for _, g in self.upload_ports)
        model_grpc = f"{h}:{self.model_ports[1]}"
        progs = [Program("model-serving", "services.model_serving", {
            "DOCTAG_HTTP_PORT": str(self.model_ports[0]), "DOCTAG_GRPC_PORT": str(self.model_ports[1])},
            self.model_ports[0], 10)]
        for i, (http, grpc_port) in enumerate(self.upload_ports, 1):
            progs.append(Program(f"upload-{i}", "services.upload", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_GRPC_PORT": str(grpc_port)}, http, 20))
        for i, (http, grpc_port) in enumerate(self.search_ports, 1):
            progs.append(Program(f"search-{i}", "services.search", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_GRPC_PORT": str(grpc_port),
                "DOCTAG_MODEL_GRPC_TARGET": model_grpc}, http, 20))
        for i, http in enumerate(self.worker_ports, 1):
            progs.append(Program(f"tagging-worker-{i}", "services.tagging_worker", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_DOCUMENTS_GRPC_TARGET": upload_grpc,
                "DOCTAG_MODEL_GRPC_TARGET": model_grpc}, http, 30))
        progs.append(Program("training-worker", "services.training_worker", {
            "DOCTAG_HTTP_PORT": str(self.training_port), "DOCTAG_TRAINING_NICE": "10"}, self.training_port, 30))
        for i, http in enumerate(self.web_ports, 1):
            progs.append(Program(f"web-{i}", "services.web", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_WEB_API_URL": self.gateway_url}, http, 20))
        progs.append(Program("gateway", "gateway", {
            "DOCTAG_HTTP_PORT": str(self.gateway_port), "DOCTAG_GATEWAY_STATUS_PORT": str(self.gateway_status_port),
            "DOCTAG_GATEWAY_CONFIG": str(self.gateway_conf.resolve())},
            self.gateway_status_port, 40))
        return progs

    def common_env(self) -> dict[str, str]:
        state = self.state_dir.resolve()
        env = {
            "DOCTAG_STATE_DIR": str(state),
            "DOCTAG_JWT_PUBLIC_KEY_FILE": str(state / "keys" / "jwt_public.pem"),
            "DOCTAG_JWT_PRIVATE_KEY_FILE": str(state / "keys" / "jwt_private.pem"),
            "DOCTAG_BLOB_DIR": str(state / "blobs"),
            "DOCTAG_TLS_DIR": str(self.pki_dir.resolve()),
            "DOCTAG_JOB_CAPABILITY_PRIVATE_KEY_FILE": str(state / "keys" / "job_capability_ed25519.pem"),
            "DOCTAG_JOB_CAPABILITY_PUBLIC_KEY_FILE": str(state / "keys" / "job_capability_ed25519.pub.pem"),
            "DOCTAG_HTTP_HOST": self.host,
            "DOCTAG_GRPC_HOST": self.host,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.env)
        return env

    # -- config files ------------------------------------------------------------
    def write_gateway_config(self, template: Path | None = None) -> Path:
        """kong.yml with this layout's upstream targets."""
        targets = {
            "upload-upstream": [f"{self.host}:{p}" for p, _ in self.upload_ports],
            "search-upstream": [f"{self.host}:{p}" for p, _ in self.search_ports],
            "model-serving-upstream": [f"{self.host}:{self.model_ports[0]}"],
            "web-upstream": [f"{self.host}:{p}" for p in self.web_ports],
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_conf.write_text(render_gateway_config(template or self.gateway_template, targets,
                                                           http_tls=self.http_tls), encoding="utf-8")
        return self.gateway_conf

    def write_supervisor_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        run, log = self.run_dir.resolve(), self.log_dir.resolve()
        common = self.common_env()
        lines = [
            "; generated by `doctag stack up`; do not edit",
            "[unix_http_server]", f"file={run / 'supervisor.sock'}", "chmod=0700", "",
            "[supervisord]", f"logfile={log / 'supervisord.log'}", f"pidfile={self.pidfile.resolve()}",
            f"directory={REPO_ROOT}", f"childlogdir={log}", "logfile_maxbytes=10MB", "logfile_backups=3", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "", "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}", "",
        ]
        for prog in self.programs():
            accounts = self.accounts.env(prog.role) if self.accounts else {}
            tls_switch = "DOCTAG_UPSTREAM_TLS" if prog.role == "gateway" else "DOCTAG_HTTP_TLS"
            tls = {tls_switch: "true"} if self.http_tls else {}
            env = {**common, **accounts, **tls, **prog.env, "DOCTAG_SERVICE_INSTANCE": prog.name}
            env_line = ",".join(f'{k}="{_supervisor_escape(v)}"' for k, v in env.items())
            lines += [
                f"[program:{prog.name}]",
                f"command={self._command(prog)}",
                f"environment={env_line}",
                f"priority={prog.priority}",
                "autostart=true", "autorestart=true", "startsecs=3", "startretries=5",
                "stopsignal=TERM", "stopwaitsecs=30", "stopasgroup=true", "killasgroup=true",
                f"stdout_logfile={log / (prog.name + '.log')}", "redirect_stderr=true",
                "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=3", "",
            ]
        # Only paths to secrets are in it, but the file says which accounts exist: the owner's only.
        fd = os.open(self.supervisor_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines))
        os.chmod(self.supervisor_conf, 0o600)
        return self.supervisor_conf

    def _command(self, prog: Program) -> str:
        command = f"{self.python} -m {prog.module}"
        cpus = self.cpu_affinity.get(prog.name)
        return f"{shutil.which('taskset') or 'taskset'} -c {cpus} {command}" if cpus else command

    # -- process control -------------------------------------------------------
    def _bin(self, name: str) -> str:
        return str(Path(self.python).parent / name)

    def supervisorctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._bin("supervisorctl"), "-c", str(self.supervisor_conf), *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def supervisord_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Starts supervisord, or (when it already runs) applies config changes and starts what is stopped."""
        from services.common import capability, pki
        from services.common.auth import ensure_keypair

        ensure_keypair(self.state_dir / "keys")
        capability.ensure_keypair(self.state_dir / "keys")
        # The platform CA and one certificate per role for this host (renewed when close to expiry;
        # running services pick renewed ones up by themselves).
        pki.ensure_local(self.pki_dir, host="localhost", ip=self.host)
        (self.state_dir / "blobs").mkdir(parents=True, exist_ok=True)
        self.write_gateway_config()
        self.write_supervisor_config()
        if self.supervisord_pid():
            self.supervisorctl("reread")
            self.supervisorctl("update")
            self.supervisorctl("start", "all")
            return
        subprocess.run([self._bin("supervisord"), "-c", str(self.supervisor_conf)], check=True, timeout=60,
                       env={**os.environ, **self.common_env()})

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Waits until every program answers /readyz with 200; raises with the failing log tails otherwise."""
        deadline = time.monotonic() + timeout
        pending = {p.name: p for p in self.programs()}
        with self.client(timeout=3) as client:
            while pending and time.monotonic() < deadline:
                for name, prog in list(pending.items()):
                    try:
                        if client.get(f"{self.service_url(prog)}/readyz").status_code == 200:
                            del pending[name]
                    except httpx.HTTPError:
                        pass
                fatal = [n for n in pending if self._state(n) in ("FATAL", "BACKOFF", "EXITED")]
                if fatal and all(self._state(n) == "FATAL" for n in fatal):
                    break
                if pending:
                    time.sleep(1)
        if pending:
            details = "\n".join(f"--- {n} ({self._state(n)}):\n{self.log_tail(n)}" for n in pending)
            raise RuntimeError(f"not ready after {timeout:.0f}s: {', '.join(pending)}\n{details}")

    def service_url(self, prog: Program) -> str:
        """The base URL of a program's own HTTP port (https when the services use mutual TLS)."""
        scheme = "https" if self.http_tls and prog.role != "gateway" else "http"
        return f"{scheme}://{self.host}:{prog.ready_port}"

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client that can reach the services' own ports: with mutual TLS, the gateway's
        certificate (the operator's tools act as the gateway here)."""
        if not self.http_tls:
            return httpx.Client(**kwargs)
        from services.common.pki import cert_paths
        from services.common.tls import ReloadingSSLContext, TlsFiles

        cert, key = cert_paths(self.pki_dir, "gateway")
        tls = ReloadingSSLContext(TlsFiles(self.pki_dir / "ca.crt", cert, key), server=False)
        return httpx.Client(verify=tls.context, **kwargs)

    def _state(self, name: str) -> str:
        out = self.supervisorctl("status", name).stdout.split()
        return out[1] if len(out) > 1 else "UNKNOWN"

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def status(self) -> str:
        if not self.supervisord_pid():
            return "the platform is not running"
        return self.supervisorctl("status").stdout

    def stop(self, timeout: float = 60.0) -> bool:
        """Stops every service and supervisord; returns False when nothing was running."""
        pid = self.supervisord_pid()
        if pid is None:
            return False
        self.supervisorctl("shutdown")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.supervisord_pid():
            time.sleep(0.3)
        if self.supervisord_pid():
            os.kill(pid, signal.SIGKILL)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL one service (tests: a crash in the middle of work). supervisord restarts it."""
        self.supervisorctl("signal", "KILL", name, check=True)


def render_gateway_config(template: Path, targets: dict[str, list[str]], *, http_tls: bool,
                          redis: dict[str, Any] | None = None) -> str:
    """kong.yml text from `template` with these upstream targets ("host:port"); with `http_tls` the
    gateway reaches them over mutual TLS; `redis` ({host, port, username, password}) replaces the
    server of the rate-limiting plugins with `policy: redis`. `make up` and `doctag deploy` (the
    gateway host) use it."""
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    for upstream in config.get("upstreams", []):
        if upstream["name"] in targets:
            upstream["targets"] = [{"target": t, "weight": 100} for t in targets[upstream["name"]]]
    if http_tls:
        use_https(config, set(targets))
    if redis is not None:
        for plugin in [*config.get("plugins", []),
                       *(p for s in config.get("services", []) for p in s.get("plugins", []))]:
            if plugin.get("name") == "rate-limiting" and (plugin.get("config") or {}).get("policy") == "redis":
                plugin["config"]["redis"] = dict(redis)
    return yaml.safe_dump(config, allow_unicode=True, sort_keys=False)


def use_https(config: dict[str, Any], upstream_names: set[str]) -> None:
    """Services on these upstreams are reached over mutual TLS, and so are the active health
    checks of those upstreams (a plain-HTTP probe of a TLS port would mark every target down)."""
    for service in config.get("services", []):
        if service.get("host") in upstream_names:
            service["protocol"] = "https"
    for upstream in config.get("upstreams", []):
        active = (upstream.get("healthchecks") or {}).get("active")
        if upstream["name"] in upstream_names and active:
            active["type"] = "https"


def _supervisor_escape(value: str) -> str:
    return value.replace("%", "%%").replace('"', '\\"')


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports
