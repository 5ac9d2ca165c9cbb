"""The seven hosts for the session: namespaces, the db host, the platform's services on the rest.

Everything is removed at the end (namespaces with every process in them, the bridge, the run's
temp dir), also when a test fails or the session is interrupted (atexit as the last resort), and
at the start what a crashed earlier run left behind.
"""
from __future__ import annotations

import asyncio
import atexit
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from services.cli import admin, amqp_accounts, db_accounts
from services.common.amqp import Topology
from services.common.migrate import upgrade
from services.common.settings import CommonSettings
from tests.hosts import netns
from tests.hosts.dbhost import DbHost, DeployedDbHost
from tests.hosts.platform import (
    AMQP_PREFIX,
    AMQP_VHOST,
    APP_HOSTS,
    DB,
    DB_NAME,
    GATEWAY,
    MODEL,
    TAGGING,
    WEB,
    DeployedPlatform,
    Platform,
    Secrets,
)
from tests.hosts.ssh import SshHosts

REPO = Path(__file__).resolve().parents[2]
# `make test-hosts DEPLOY=bundles`: the application hosts are deployed by `doctag deploy` over SSH
# from the offline bundles in dist/ (`make bundle`); otherwise their services are started from this
# checkout with configuration the test writes (see test_seven_hosts.py's docstring).
DEPLOY_MODE = os.environ.get("DOCTAG_TEST_HOSTS_DEPLOY", "")

RUN_DIR_PREFIX = "dt-hosts-"


@dataclass
class Seven:
    platform: Platform
    db: DbHost | DeployedDbHost
    admin_dsn: str
    timings: dict[str, float]


def _require_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the seven-host tests need root and iproute2 (network namespaces)")


def _teardown(root: Path) -> None:
    netns.remove_all()
    shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (a CI timeout) as Ctrl-C: pytest then still tears the session's fixtures down."""
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def seven() -> Iterator[Seven]:
    _require_root()
    for leftover in glob.glob(os.path.join(tempfile.gettempdir(), RUN_DIR_PREFIX + "*")):
        shutil.rmtree(leftover, ignore_errors=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=tempfile.gettempdir()))
    os.chmod(root, 0o755)  # the db host's postgres user reaches its data dir below it
    atexit.register(_teardown, root)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        netns.create()
        hba = {"api-gw": [GATEWAY.address], "web": [w.address for w in WEB], "model": [MODEL.address]}
        if DEPLOY_MODE == "bundles":
            platform: Platform = DeployedPlatform(root)
            assert isinstance(platform, DeployedPlatform)
            _deploy(platform, root)
            timings["deployed"] = time.monotonic() - t0
            db: DbHost | DeployedDbHost = DeployedDbHost(DB, platform.install_root(DB), platform.state_dir(DB))
            admin_dsn = db.admin_dsn(DB_NAME)
        else:
            platform = Platform(root)
            db = DbHost(DB, root / "hosts" / DB.name, hba)
            platform.init_operator()
            db.start()
            timings["db host"] = time.monotonic() - t0
            admin_dsn = _set_up_db(db)
            amqp_dir = root / "operator" / "secrets"
            platform.secrets = _accounts(db, admin_dsn, amqp_dir)
            timings["db set-up"] = time.monotonic() - t0
            for host in (MODEL, *WEB, *TAGGING, GATEWAY):  # the slow model host first; all start at once
                platform.configure(host)
                platform.start(host)
        platform.wait_ready(APP_HOSTS)
        timings["ready"] = time.monotonic() - t0
        yield Seven(platform, db, admin_dsn, timings)
    finally:
        _teardown(root)
        atexit.unregister(_teardown)
        signal.signal(signal.SIGTERM, previous)


def _set_up_db(db: DbHost) -> str:
    """What the operator does once for a self-started db host: migrations (as postgres)."""
    upgrade(CommonSettings(db_host=DB.address, db_port=5432, db_name=DB_NAME), user="postgres",
            password=db.postgres_password)
    return db.admin_dsn(DB_NAME)


def _accounts(db: DbHost, admin_dsn: str, secrets_dir: Path) -> Secrets:
    """The services' PostgreSQL passwords and RabbitMQ users, and the broker's topology."""
    db_files = db_accounts.ensure_passwords(admin_dsn, secrets_dir / "db")
    topology = Topology(prefix=AMQP_PREFIX)
    ctl = amqp_accounts.Rabbitmqctl(str(db.rabbitmqctl_wrapper()))
    amqp_files = amqp_accounts.ensure(AMQP_VHOST, AMQP_PREFIX, topology, secrets_dir / "amqp", ctl)
    names = amqp_accounts.users(AMQP_PREFIX, topology)
    asyncio.run(amqp_accounts.declare_topology(amqp_accounts.url(
        DB.address, 5672, AMQP_VHOST, names["admin"].name, amqp_files["admin"].read_text().strip()), topology))
    roles = ("upload", "tagging-worker", "model-serving", "training-worker")
    return Secrets(db_files, {r: amqp_files[r] for r in roles}, {r: names[r].name for r in roles}, db.redis_password)


def _deploy(platform: DeployedPlatform, root: Path) -> None:
    """`doctag deploy all` over SSH from the bundles in dist/ (what `make deploy-all` runs): the db
    host, then each role in dependency order, the replicas of a role at once, each waited for until
    ready."""
    inventory = root / "inventory.yaml"
    inventory.write_text(platform.inventory(), encoding="utf-8")
    ssh = SshHosts(root / "ssh", netns.HOSTS)
    ssh.start()
    result = subprocess.run(
        [platform.python, "-m", "services.cli.main", "deploy", "all",
         "--inventory", str(inventory), "--ssh", f"ssh -F {ssh.client_config}", "--dist", str(REPO / "dist"),
         "--state", str(platform.state_root), "--timeout", "400"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=1800)
    print("\n".join(line for line in result.stdout.splitlines() if "ready" in line or "unchanged" in line))
    assert result.returncode == 0, "doctag deploy all failed:\n" + result.stdout[-6000:]


@pytest.fixture(scope="session")
def departments(seven: Seven) -> dict[str, tuple[str, str, str]]:
    """Two departments with one user each: key -> (tenant slug, username, password)."""
    out = {}
    for key, slug, name in (("a", "hosts-finance", "재정기획과"), ("b", "hosts-culture", "문화체육과")):
        admin.create_tenant(seven.admin_dsn, slug, name, 200 * 1024 * 1024)
        admin.create_user(seven.admin_dsn, slug, "user1", "correct horse battery", "user")
        out[key] = (slug, "user1", "correct horse battery")
    return out


def document_rows(admin_dsn: str, tenant_slug: str) -> list[tuple[str, str, str, str | None]]:
    """(id, filename, status, error) of every document of one department, read on the db host."""
    with psycopg.connect(admin_dsn) as conn:
        return [(str(r[0]), r[1], r[2], r[3]) for r in conn.execute(
            "SELECT d.id, d.filename, d.status, d.error FROM documents.documents d "
            "JOIN identity.tenants t ON t.id = d.tenant_id WHERE t.slug = %s", (tenant_slug,)).fetchall()]
