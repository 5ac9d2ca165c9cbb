"""The db host inside its namespace: PostgreSQL, RabbitMQ and Redis with data dirs of their own.

Started directly (pg_ctl as `postgres`, rabbitmq-server with its own node name, mnesia and log
dirs, redis-server) because a namespace cannot run systemd; they listen on the db host's private
address only (and loopback inside the namespace), next to the machine's own servers on 127.0.0.1,
which they never touch. PostgreSQL's pg_hba.conf is the deployment's (`db_accounts.render_pg_hba`:
each service role only from its VM role's hosts, scram-sha-256, the operator's address for the
admin role, everything else rejected); RabbitMQ has the services' own users (no guest from the
network); Redis needs a password.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from services.cli import db_accounts
from tests.hosts.netns import BRIDGE_ADDRESS, Host, in_ns

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RABBIT_NODE = "dtrabbit@localhost"


class DbHost:
    def __init__(self, host: Host, root: Path, hba_hosts: dict[str, list[str]]) -> None:
        self.host = host
        self.root = root
        self.pgdata = root / "pgdata"
        self.pgsock = root / "pgsock"
        self.pglog = root / "pglog"
        self.rabbit_dir = root / "rabbitmq"
        self.redis_dir = root / "redis"
        self.secrets = root / "secrets"
        self.hba_hosts = hba_hosts
        self._procs: list[subprocess.Popen[bytes]] = []

    # -- secrets -----------------------------------------------------------------
    @property
    def postgres_password(self) -> str:
        return db_accounts.read_or_create_password(self.secrets / "postgres")

    @property
    def redis_password(self) -> str:
        return db_accounts.read_or_create_password(self.secrets / "redis")

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return (f"host={self.host.address} port=5432 user=postgres dbname={dbname} "
                f"password={self.postgres_password}")

    # -- PostgreSQL -------------------------------------------------------------
    def _as_postgres(self, *argv: str) -> list[str]:
        return in_ns(self.host, ["runuser", "-u", "postgres", "--", *argv])

    def init_postgres(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for d in (self.pgdata, self.pgsock, self.pglog):
            d.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(d, "postgres", "postgres")
        pwfile = self.root / "pgpass.tmp"
        pwfile.write_text(self.postgres_password + "\n")
        shutil.chown(pwfile, "postgres")
        try:
            subprocess.run(self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                                             "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=peer",
                                             "--auth-host=scram-sha-256", f"--pwfile={pwfile}"),
                           check=True, capture_output=True, timeout=120)
        finally:
            pwfile.unlink()
        (self.pgdata / "pg_hba.conf").write_text(
            db_accounts.render_pg_hba(self.hba_hosts, [BRIDGE_ADDRESS], connection="host"), encoding="utf-8")
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\nlisten_addresses = '{self.host.address}'\nport = 5432\n"
                       f"unix_socket_directories = '{self.pgsock}'\nmax_connections = 300\n"
                       # A client host that vanishes from the network (not one that closes its
                       # connections) would otherwise keep its sessions, and the row locks its
                       # transactions hold (the outbox relay's dispatch lock), for the kernel's
                       # two hours of keepalive silence: detect it in about 25 s instead.
                       "tcp_keepalives_idle = 10\ntcp_keepalives_interval = 5\ntcp_keepalives_count = 3\n"
                       "tcp_user_timeout = 25000\n")

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-l",
                                         str(self.pglog / "postgresql.log"), "-w", "-t", "60", *args),
                       check=True, capture_output=True, timeout=90)

    # -- RabbitMQ ---------------------------------------------------------------
    def _rabbit_env(self) -> dict[str, str]:
        d = self.rabbit_dir
        return {"HOME": str(d), "RABBITMQ_NODENAME": RABBIT_NODE, "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
                "RABBITMQ_LOG_BASE": str(d / "log"), "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
                "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"), "ERL_EPMD_ADDRESS": "127.0.0.1",
                # Erlang distribution (rabbitmqctl's channel) stays on the namespace's loopback.
                "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def rabbitmqctl_wrapper(self) -> Path:
        """An executable `rabbitmqctl` that talks to this node (for services/cli/amqp_accounts.py)."""
        path = self.rabbit_dir / "rabbitmqctl"
        env = " ".join(f"{k}='{v}'" for k, v in self._rabbit_env().items())
        path.write_text(f"#!/bin/sh\nexec ip netns exec {self.host.netns} env {env} "
                        f"{RABBIT_BIN / 'rabbitmqctl'} \"$@\"\n")
        path.chmod(0o700)
        return path

    def init_rabbitmq(self) -> None:
        d = self.rabbit_dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.1 = {self.host.address}:5672\n"
                                         "listeners.tcp.2 = 127.0.0.1:5672\nloopback_users.guest = true\n")
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("")
        cookie = d / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)

    def start_rabbitmq(self) -> None:
        log = (self.rabbit_dir / "server.out").open("ab")
        self._procs.append(subprocess.Popen(in_ns(self.host, [str(RABBIT_BIN / "rabbitmq-server")]),
                                            env=self._rabbit_env(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))

    def wait_rabbitmq(self, timeout: float = 120) -> None:
        """Until the node has booted (`await_startup` fails at once while the VM has not registered yet)."""
        ctl, deadline = str(self.rabbitmqctl_wrapper()), time.monotonic() + timeout
        while True:
            done = subprocess.run([ctl, "await_startup", "--timeout", "30"], capture_output=True, text=True,
                                  timeout=60)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ on {self.host.name} did not start: {done.stderr[-800:]}")
            time.sleep(1)  # poll interval

    def stop_rabbitmq(self) -> None:
        subprocess.run([str(self.rabbitmqctl_wrapper()), "shutdown"], check=True, capture_output=True, timeout=120)

    # -- Redis ------------------------------------------------------------------
    def start_redis(self) -> None:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        conf = self.redis_dir / "redis.conf"
        conf.write_text(f"bind {self.host.address} 127.0.0.1\nport 6379\nprotected-mode yes\n"
                        f"requirepass {self.redis_password}\ndir {self.redis_dir}\nsave \"\"\nappendonly no\n"
                        f"logfile {self.redis_dir / 'redis.log'}\n")
        conf.chmod(0o600)
        self._procs.append(subprocess.Popen(in_ns(self.host, ["redis-server", str(conf)]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True))

    # -- all --------------------------------------------------------------------
    def start(self) -> None:
        """Everything, in parallel where it can be; returns when PostgreSQL and RabbitMQ answer."""
        self.init_rabbitmq()
        self.start_rabbitmq()
        self.start_redis()
        self.init_postgres()
        self.pg_ctl("start")
        self.wait_rabbitmq()

    def restart_postgres(self) -> None:
        self.pg_ctl("restart", "-m", "fast")

    def restart_rabbitmq(self) -> None:
        self.stop_rabbitmq()
        self.start_rabbitmq()
        self.wait_rabbitmq()

    def log_tails(self, lines: int = 30) -> str:
        out = []
        for path in (self.pglog / "postgresql.log", self.rabbit_dir / "server.out"):
            if path.exists():
                out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def wait_port(host: str, port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)  # poll interval


class DeployedDbHost:
    """The db host as `doctag deploy` sets it up (`doctag dbhost setup --no-systemd` over SSH): its
    servers are controlled with the db role's own `doctag dbhost` commands, run inside dt-db; the
    test reads the database as the host's root does (unix socket, peer authentication)."""

    def __init__(self, host: Host, install_root: Path, state_dir: Path) -> None:
        self.host = host
        self.doctag = install_root / "current" / "venv" / "bin" / "doctag"
        self.data_root = state_dir / "db"

    def admin_dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.data_root / 'postgres' / 'run'} port=5432 user=postgres dbname={dbname}"

    def _control(self, action: str, only: str) -> None:
        subprocess.run(in_ns(self.host, [str(self.doctag), "dbhost", action, "--data-root", str(self.data_root),
                                         "--only", only]), check=True, capture_output=True, timeout=180)

    def restart_postgres(self) -> None:
        self._control("restart", "postgres")

    def restart_rabbitmq(self) -> None:
        self._control("restart", "rabbitmq")

    def log_tails(self, lines: int = 30) -> str:
        path = self.data_root / "postgres" / "postgres.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
