"""Checks that PostgreSQL and RabbitMQ answer at the configured addresses.

When one does not answer and this is Debian with the server installed and we
are root, it is started (the same commands the distribution uses); otherwise
the caller gets an exact message of what is missing and how to provide it.
Nothing ever falls back to a substitute.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from services.common.settings import CommonSettings


@dataclass
class Missing:
    what: str
    how: str

    def __str__(self) -> str:
        return f"{self.what}\n  how to fix: {self.how}"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _postgres_error(settings: CommonSettings, admin_user: str, admin_password: str) -> str | None:
    try:
        dsn = settings.dsn(user=admin_user, password=admin_password).replace(
            f"dbname='{settings.db_name}'", "dbname='postgres'")
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _rabbitmq_error(settings: CommonSettings) -> str | None:
    import logging

    import aio_pika

    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)  # the failure is reported below, once

    async def probe() -> None:
        connection = await aio_pika.connect(settings.amqp_url, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is reported verbatim
        return f"{type(exc).__name__}: {exc}"


def _is_local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def _try_start(commands: list[list[str]], host: str, port: int, default_port: int, wait_seconds: float = 60) -> bool:
    """Starts a locally installed server; only as root, on loopback, and on the port the distribution uses."""
    if os.geteuid() != 0 or not _is_local(host) or port != default_port:
        return False
    for cmd in commands:
        if shutil.which(cmd[0]) is None:
            return False
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return True
        time.sleep(1)
    return False


def _pg_start_commands() -> list[list[str]]:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if not versions:
        return [["false"]]
    return [["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]]


def check(settings: CommonSettings, admin_user: str, admin_password: str, *,
          start_missing: bool = True) -> list[Missing]:
    """Returns what is missing (empty when both servers answer)."""
    missing: list[Missing] = []
    amqp_host = settings.amqp_url.split("@")[-1].split("/")[0].split(":")[0] or "127.0.0.1"
    amqp_port = int([*settings.amqp_url.split("@")[-1].split("/")[0].split(":"), "5672"][1] or 5672)

    pg_error = _postgres_error(settings, admin_user, admin_password)
    if (pg_error and start_missing and not _port_open(settings.db_host, settings.db_port)
            and _try_start(_pg_start_commands(), settings.db_host, settings.db_port, 5432)):
        pg_error = _postgres_error(settings, admin_user, admin_password)
    if pg_error:
        missing.append(Missing(
            f"PostgreSQL is not reachable at {settings.db_host}:{settings.db_port} as {admin_user}: {pg_error}",
            "start PostgreSQL (Debian: `apt-get install postgresql` then "
            "`pg_ctlcluster --skip-systemctl-redirect <version> main start`), or point DOCTAG_DB_HOST, DOCTAG_DB_PORT, "
            "DOCTAG_DB_ADMIN_USER and DOCTAG_DB_ADMIN_PASSWORD at a server where that role may create databases"))

    mq_error = _rabbitmq_error(settings)
    if (mq_error and start_missing and not _port_open(amqp_host, amqp_port)
            and _try_start([["rabbitmq-server", "-detached"]], amqp_host, amqp_port, 5672, wait_seconds=90)):
        time.sleep(3)  # the port opens a moment before the broker accepts AMQP logins
        mq_error = _rabbitmq_error(settings)
    if mq_error:
        missing.append(Missing(
            f"RabbitMQ is not reachable at {amqp_host}:{amqp_port}: {mq_error}",
            "start RabbitMQ (Debian: `apt-get install rabbitmq-server` then `rabbitmq-server -detached`), "
            "or set DOCTAG_AMQP_URL (amqp://user:password@host:5672/vhost)"))
    return missing
