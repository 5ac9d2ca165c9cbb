"""Starting, stopping and asking the db host's three servers, without systemd.

Each runs as its package's user from its own directory under the data root (dbhost_config.py):
PostgreSQL with `pg_ctl`, RabbitMQ with `rabbitmq-server -detached` and `rabbitmqctl`, Redis
daemonised with a pid file. On hosts with systemd the units of `dbhost_config.systemd_units` run
the same programs; these functions are for hosts without it (and the multi-host test, where the
db host lives in a network namespace).
"""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from .dbhost_config import (
    PG_BIN,
    PG_USER,
    RABBITMQ_BIN,
    RABBITMQ_USER,
    REDIS_SERVER,
    REDIS_USER,
    DbHostConfig,
    as_user,
    rabbit_env,
)

SERVERS = ("postgres", "rabbitmq", "redis")


class DbHostError(Exception):
    """A db host server could not be set up, started or stopped; the message says which and why."""


def run(argv: Sequence[str], *, what: str, timeout: float = 120, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a command, its output in a temporary file, never a pipe: a daemon it starts keeps the
    file open, and would keep us waiting on a pipe."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out:
        proc = subprocess.run(list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        out.seek(0)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), "")
    if check and result.returncode != 0:
        raise DbHostError(f"{what} failed ({result.returncode}): {result.stdout.strip()[-2000:]}")
    return result


# ------------------------------------------------------------------ PostgreSQL


def pg_ctl(cfg: DbHostConfig, *args: str, check: bool = True, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return run([*as_user(PG_USER), str(PG_BIN / "pg_ctl"), "-D", str(cfg.pg_data), *args],
               what=f"pg_ctl {args[0]}", check=check, timeout=timeout)


def pg_running(cfg: DbHostConfig) -> bool:
    return (cfg.pg_data / "PG_VERSION").exists() and pg_ctl(cfg, "status", check=False).returncode == 0


def pg_start(cfg: DbHostConfig) -> None:
    if not pg_running(cfg):
        pg_ctl(cfg, "start", "-w", "-t", "120", "-l", str(cfg.pg_log))


def pg_stop(cfg: DbHostConfig) -> None:
    if pg_running(cfg):
        pg_ctl(cfg, "stop", "-w", "-t", "120", "-m", "fast")


def pg_restart(cfg: DbHostConfig) -> None:
    pg_ctl(cfg, "restart", "-w", "-t", "120", "-m", "fast", "-l", str(cfg.pg_log))


def pg_reload(cfg: DbHostConfig) -> None:
    pg_ctl(cfg, "reload")


# ------------------------------------------------------------------ RabbitMQ


def rabbit_prefix(cfg: DbHostConfig) -> list[str]:
    return as_user(RABBITMQ_USER, rabbit_env(cfg))


def rabbitmqctl(cfg: DbHostConfig, *args: str, check: bool = True, timeout: float = 120
                ) -> subprocess.CompletedProcess[str]:
    return run([*rabbit_prefix(cfg), str(RABBITMQ_BIN / "rabbitmqctl"), "-n", cfg.rabbit_node, *args],
               what=f"rabbitmqctl {args[0]}", check=check, timeout=timeout)


def _pid_alive(pid_file: os.PathLike[str]) -> int | None:
    try:
        with open(pid_file, encoding="ascii") as fh:
            pid = int(fh.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def rabbit_running(cfg: DbHostConfig) -> bool:
    return _pid_alive(cfg.rabbit_pid) is not None


def rabbit_start(cfg: DbHostConfig) -> None:
    if rabbit_running(cfg):
        return
    cfg.rabbit_pid.unlink(missing_ok=True)
    run([*rabbit_prefix(cfg), str(RABBITMQ_BIN / "rabbitmq-server"), "-detached"], what="rabbitmq-server")
    # `wait` returns once the node runs (or fails when its process ends first).
    rabbitmqctl(cfg, "wait", "--timeout", "120", str(cfg.rabbit_pid), timeout=150)


def rabbit_stop(cfg: DbHostConfig) -> None:
    if rabbit_running(cfg):
        rabbitmqctl(cfg, "stop", str(cfg.rabbit_pid), timeout=150)
    _stop_idle_epmd(cfg)


def _stop_idle_epmd(cfg: DbHostConfig) -> None:
    """The node started Erlang's port mapper (epmd), which outlives it: stopped too when no other
    node uses it (in a network namespace it would keep the namespace alive); never when another
    node, such as the distribution's RabbitMQ, is registered."""
    epmd = [*rabbit_prefix(cfg), "epmd"]
    names = run([*epmd, "-names"], what="epmd -names", check=False, timeout=10)
    if names.returncode == 0 and not any(line.startswith("name ") for line in names.stdout.splitlines()):
        run([*epmd, "-kill"], what="epmd -kill", check=False, timeout=10)


# ------------------------------------------------------------------ Redis


def redis_running(cfg: DbHostConfig) -> bool:
    return _pid_alive(cfg.redis_pid) is not None


def redis_start(cfg: DbHostConfig) -> None:
    if redis_running(cfg):
        return
    run([*as_user(REDIS_USER), REDIS_SERVER, str(cfg.redis_dir / "redis.conf")], what="redis-server")
    _wait(lambda: redis_running(cfg), 30, "redis-server did not write its pid file "
          f"(see {cfg.redis_dir / 'redis.log'})")


def redis_stop(cfg: DbHostConfig) -> None:
    pid = _pid_alive(cfg.redis_pid)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: _pid_alive(cfg.redis_pid) is None and not _exists(pid), 60, "redis-server did not stop")


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait(ready: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise DbHostError(message)
        time.sleep(0.1)


# ------------------------------------------------------------------ all three


def start(cfg: DbHostConfig, only: Sequence[str] = SERVERS) -> None:
    for name in SERVERS:
        if name in only:
            {"postgres": pg_start, "rabbitmq": rabbit_start, "redis": redis_start}[name](cfg)


def stop(cfg: DbHostConfig, only: Sequence[str] = SERVERS) -> None:
    for name in reversed(SERVERS):
        if name in only:
            {"postgres": pg_stop, "rabbitmq": rabbit_stop, "redis": redis_stop}[name](cfg)


def status(cfg: DbHostConfig) -> dict[str, bool]:
    return {"postgres": pg_running(cfg), "rabbitmq": rabbit_running(cfg), "redis": redis_running(cfg)}


# ------------------------------------------------------------------ who controls them


class Direct:
    """Servers started by `doctag dbhost` itself (hosts without systemd)."""

    def running(self, cfg: DbHostConfig, name: str) -> bool:
        return status(cfg)[name]

    def start(self, cfg: DbHostConfig, name: str) -> None:
        start(cfg, [name])

    def restart(self, cfg: DbHostConfig, name: str) -> None:
        if name == "postgres" and pg_running(cfg):
            pg_restart(cfg)
            return
        stop(cfg, [name])
        start(cfg, [name])

    def reload(self, cfg: DbHostConfig, name: str) -> None:
        if name == "postgres":
            pg_reload(cfg)
        else:
            self.restart(cfg, name)


class Systemd(Direct):
    """Servers as systemd units `doctag-<postgresql|rabbitmq|redis>` (dbhost_config.systemd_units);
    the distribution's own instances are disabled (its RabbitMQ would take port 5672 everywhere)."""

    UNITS: ClassVar[dict[str, str]] = {"postgres": "doctag-postgresql", "rabbitmq": "doctag-rabbitmq",
                                       "redis": "doctag-redis"}
    DISTRIBUTION_UNITS = ("postgresql.service", "rabbitmq-server.service", "redis-server.service")

    def install(self, units: dict[str, str], unit_dir: str = "/etc/systemd/system") -> bool:
        from pathlib import Path

        from .dbhost_config import write_if_changed

        changed = False
        for name, text in units.items():
            changed |= write_if_changed(Path(unit_dir) / name, text)
        if changed:
            run(["systemctl", "daemon-reload"], what="systemctl daemon-reload")
            run(["systemctl", "disable", "--now", *self.DISTRIBUTION_UNITS], what="systemctl disable", check=False)
        return changed

    def running(self, cfg: DbHostConfig, name: str) -> bool:
        return run(["systemctl", "is-active", "--quiet", self.UNITS[name]], what="systemctl", check=False
                   ).returncode == 0

    def start(self, cfg: DbHostConfig, name: str) -> None:
        run(["systemctl", "enable", "--now", self.UNITS[name]], what=f"start of {self.UNITS[name]}", timeout=300)

    def restart(self, cfg: DbHostConfig, name: str) -> None:
        run(["systemctl", "restart", self.UNITS[name]], what=f"restart of {self.UNITS[name]}", timeout=300)

    def reload(self, cfg: DbHostConfig, name: str) -> None:
        verb = "reload" if name == "postgres" else "restart"
        run(["systemctl", verb, self.UNITS[name]], what=f"{verb} of {self.UNITS[name]}", timeout=300)
