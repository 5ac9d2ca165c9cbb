"""The whole platform started as processes (supervisor, free ports, its own database,
AMQP prefix and state dir), exactly as `make up` starts it."""
from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import admin, amqp_accounts
from services.cli.stack import ServiceAccounts, StackLayout
from services.common.amqp import Topology
from tests.conftest import AMQP_URL, DB_HOST, DB_PORT
from tests.support import delete_topology


def broker_accounts(state: Path, prefix: str) -> ServiceAccounts | None:
    """As `make up` does: the services' own RabbitMQ users in a vhost of this session (no guest, no
    `configure` permission; the topology declared by the vhost's administrator). None without
    rabbitmqctl: the services then use guest on "/" as before."""
    if shutil.which("rabbitmqctl") is None:
        return None
    topology = Topology(prefix=prefix)
    files = amqp_accounts.ensure(prefix, prefix, topology, state / "secrets" / "amqp")
    names = amqp_accounts.users(prefix, topology)
    admin_url = amqp_accounts.url("127.0.0.1", 5672, prefix, names["admin"].name, files["admin"].read_text().strip())
    asyncio.run(amqp_accounts.declare_topology(admin_url, topology))
    urls = {role: amqp_accounts.url("127.0.0.1", 5672, prefix, names[role].name)
            for role in ("upload", "tagging-worker", "model-serving", "training-worker")}
    return ServiceAccounts({}, urls, {role: files[role] for role in urls})


@pytest.fixture(scope="session")
def stack(test_db_name: str, admin_dsn: str, amqp_prefix: str) -> Iterator[StackLayout]:
    # A short path: supervisor's unix socket path must stay under ~100 characters.
    state = Path(tempfile.mkdtemp(prefix="doctag-e2e-", dir="/tmp"))
    accounts = broker_accounts(state, amqp_prefix)
    layout = StackLayout.with_free_ports(state, env={
        "DOCTAG_DB_HOST": DB_HOST, "DOCTAG_DB_PORT": str(DB_PORT), "DOCTAG_DB_NAME": test_db_name,
        "DOCTAG_AMQP_URL": AMQP_URL, "DOCTAG_AMQP_PREFIX": amqp_prefix,
        "DOCTAG_TORCH_THREADS": "1", "DOCTAG_RELAY_POLL_SECONDS": "0.5",
    })
    layout.accounts = accounts
    try:
        layout.start()
        layout.wait_ready(timeout=300)
        yield layout
    finally:
        layout.stop()
        if accounts is not None:
            amqp_accounts.remove(amqp_prefix, amqp_prefix, Topology(prefix=amqp_prefix))
        else:
            delete_topology(AMQP_URL, amqp_prefix)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def accounts(stack: StackLayout, admin_dsn: str) -> dict[str, tuple[str, str, str]]:
    """Two departments with one user each: name -> (tenant slug, username, password)."""
    out = {}
    for key, slug, name in (("a", "e2e-finance", "재정기획과"), ("b", "e2e-culture", "문화체육과")):
        admin.create_tenant(admin_dsn, slug, name, 50 * 1024 * 1024)
        admin.create_user(admin_dsn, slug, "user1", "correct horse battery", "user")
        out[key] = (slug, "user1", "correct horse battery")
    return out
