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
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class StackLayout:
    state_dir: Path
    gateway_port: int = 8080
    upload_ports: list[tuple[int, int]] = field(default_factory=lambda: [(8101, 9101), (8102, 9102)])
    search_ports: list[tuple[int, int]] = field(default_factory=lambda: [(8111, 9111), (8112, 9112)])
    model_ports: tuple[int, int] = (8121, 9121)
    worker_ports: list[int] = field(default_factory=lambda: [8131, 8132])
    web_ports: list[int] = field(default_factory=lambda: [8141, 8142])
    host: str = "127.0.0.1"
    # Extra DOCTAG_* variables for every process (database name, AMQP prefix, ...).
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    # The gateway configuration this layout's kong.yml is made from (benchmarks raise its size limits).
    gateway_template: Path = DEFAULT_GATEWAY_CONFIG

    @classmethod
    def with_free_ports(cls, state_dir: Path, env: dict[str, str] | None = None) -> StackLayout:
        ports = free_ports(15)
        return cls(state_dir=state_dir, gateway_port=ports[0],
                   upload_ports=[(ports[1], ports[2]), (ports[3], ports[4])],
                   search_ports=[(ports[5], ports[6]), (ports[7], ports[8])],
                   model_ports=(ports[9], ports[10]), worker_ports=[ports[11], ports[12]],
                   web_ports=[ports[13], ports[14]], env=dict(env or {}))

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
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

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
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_GRPC_PORT": str(grpc_port)}, http, 20))
        for i, http in enumerate(self.worker_ports, 1):
            progs.append(Program(f"tagging-worker-{i}", "services.tagging_worker", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_DOCUMENTS_GRPC_TARGET": upload_grpc,
                "DOCTAG_MODEL_GRPC_TARGET": model_grpc}, http, 30))
        for i, http in enumerate(self.web_ports, 1):
            progs.append(Program(f"web-{i}", "services.web", {
                "DOCTAG_HTTP_PORT": str(http), "DOCTAG_WEB_API_URL": self.gateway_url}, http, 20))
        progs.append(Program("gateway", "gateway", {
            "DOCTAG_HTTP_PORT": str(self.gateway_port), "DOCTAG_GATEWAY_CONFIG": str(self.gateway_conf.resolve())},
            self.gateway_port, 40))
        return progs

    def common_env(self) -> dict[str, str]:
        state = self.state_dir.resolve()
        env = {
            "DOCTAG_STATE_DIR": str(state),
            "DOCTAG_JWT_PUBLIC_KEY_FILE": str(state / "keys" / "jwt_public.pem"),
            "DOCTAG_JWT_PRIVATE_KEY_FILE": str(state / "keys" / "jwt_private.pem"),
            "DOCTAG_BLOB_DIR": str(state / "blobs"),
            "DOCTAG_HTTP_HOST": self.host,
            "DOCTAG_GRPC_HOST": self.host,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(self.env)
        return env

    # -- config files ------------------------------------------------------------
    def write_gateway_config(self, template: Path | None = None) -> Path:
        """kong.yml with this layout's upstream targets."""
        template = template or self.gateway_template
        config = yaml.safe_load(template.read_text(encoding="utf-8"))
        targets = {
            "upload-upstream": [f"{self.host}:{p}" for p, _ in self.upload_ports],
            "search-upstream": [f"{self.host}:{p}" for p, _ in self.search_ports],
            "model-serving-upstream": [f"{self.host}:{self.model_ports[0]}"],
            "web-upstream": [f"{self.host}:{p}" for p in self.web_ports],
        }
        for upstream in config.get("upstreams", []):
            if upstream["name"] in targets:
                upstream["targets"] = [{"target": t, "weight": 100} for t in targets[upstream["name"]]]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.gateway_conf.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
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
            env = {**common, **prog.env, "DOCTAG_SERVICE_INSTANCE": prog.name}
            env_line = ",".join(f'{k}="{_supervisor_escape(v)}"' for k, v in env.items())
            lines += [
                f"[program:{prog.name}]",
                f"command={self.python} -m {prog.module}",
                f"environment={env_line}",
                f"priority={prog.priority}",
                "autostart=true", "autorestart=true", "startsecs=3", "startretries=5",
                "stopsignal=TERM", "stopwaitsecs=30", "stopasgroup=true", "killasgroup=true",
                f"stdout_logfile={log / (prog.name + '.log')}", "redirect_stderr=true",
                "stdout_logfile_maxbytes=20MB", "stdout_logfile_backups=3", "",
            ]
        self.supervisor_conf.write_text("\n".join(lines), encoding="utf-8")
        return self.supervisor_conf

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
        from services.common.auth import ensure_keypair

        ensure_keypair(self.state_dir / "keys")
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
        with httpx.Client(timeout=3) as client:
            while pending and time.monotonic() < deadline:
                for name, prog in list(pending.items()):
                    try:
                        if client.get(f"http://{self.host}:{prog.ready_port}/readyz").status_code == 200:
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
