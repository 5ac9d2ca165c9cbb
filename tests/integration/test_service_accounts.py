"""Least privilege at the data layer, against real servers: each service's PostgreSQL role and
RabbitMQ user tries something it must not do and is refused; passwords are SCRAM verifiers in
0600 files; the deployment's pg_hba.conf admits each role only from its hosts (checked on a
throwaway PostgreSQL cluster), so a tagging host gets no database connection at all."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import aiormq
import psycopg
import pytest
from psycopg import sql

from services.cli import amqp_accounts, db_accounts
from services.common.amqp import DOCUMENT_UPLOADED, Topology
from services.upload.dead_letters import DeadLetters
from tests.conftest import AMQP_URL, DB_HOST, DB_PORT, SESSION_ID, create_tenant

pytestmark = pytest.mark.integration

PG_BIN = Path("/usr/lib/postgresql/15/bin")
EXAMPLE_HBA = Path(__file__).resolve().parents[2] / "infra" / "postgres" / "pg_hba.conf.example"


# ------------------------------------------------------------------ PostgreSQL roles (the shared test database)


def _as(role: str, test_db_name: str) -> psycopg.Connection:
    return psycopg.connect(host=DB_HOST, port=DB_PORT, user=role, dbname=test_db_name, autocommit=True)


@pytest.mark.parametrize("role,statement", [
    ("doctag_search", "INSERT INTO documents.document_tags (tenant_id, document_id, tag, score) "
                      "VALUES (gen_random_uuid(), gen_random_uuid(), 'x', 1)"),
    ("doctag_search", "UPDATE documents.documents SET status = 'failed'"),
    ("doctag_search", "DELETE FROM documents.documents"),
    ("doctag_upload", "SELECT password_hash FROM identity.users"),
    ("doctag_upload", "SELECT * FROM models.inference_log"),
    ("doctag_model", "SELECT text_content FROM documents.documents"),
    ("doctag_gateway", "UPDATE documents.documents SET status = 'failed'"),
    ("doctag_relay", "UPDATE documents.documents SET status = 'failed'"),
])
def test_service_roles_are_refused_what_they_must_not_do(test_db_name: str, admin_dsn: str, role: str,
                                                         statement: str) -> None:
    create_tenant(admin_dsn, f"acl-{uuid.uuid4().hex[:8]}")
    with _as(role, test_db_name) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)


def test_role_passwords_are_scram_verifiers_in_private_files(admin_dsn: str, tmp_path: Path) -> None:
    role = f"doctag_test_{SESSION_ID}_pw"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        files = db_accounts.ensure_passwords(admin_dsn, tmp_path / "secrets" / "db", roles=(role,))
        path = files[role]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        password = path.read_text().strip()
        assert len(password) >= 40
        with psycopg.connect(admin_dsn) as conn:
            stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)).fetchone()
        assert stored is not None and stored[0].startswith("SCRAM-SHA-256$") and password not in stored[0]
        db_accounts.ensure_passwords(admin_dsn, tmp_path / "secrets" / "db", roles=(role,))
        assert path.read_text().strip() == password  # kept on the next `make up`
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_the_pg_hba_example_is_current() -> None:
    expected = db_accounts.render_pg_hba({"api-gw": ["10.0.1.10"], "web": ["10.0.2.11", "10.0.2.12"],
                                          "model": ["10.0.4.10"]}, ["10.0.9.10"], database="doctag")
    assert EXAMPLE_HBA.read_text(encoding="utf-8") == expected, "regenerate with `doctag db hba` (see README)"


# ------------------------------------------------------------------ pg_hba.conf on a throwaway cluster


@dataclass
class Cluster:
    data: Path
    port: int

    def ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True, timeout=120)

    def use_hba(self, text: str) -> None:
        (self.data / "pg_hba.conf").write_text(text, encoding="utf-8")
        self.ctl("reload")

    def connect(self, user: str, password: str | None) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="doctag", password=password,
                               connect_timeout=5, autocommit=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0 or not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("needs root, runuser and PostgreSQL 15's initdb to start a throwaway cluster")
    # Directly under /tmp: the postgres user must reach it (pytest's own temporary tree is root's only).
    base = Path(tempfile.mkdtemp(prefix="doctag-pg-", dir="/tmp"))
    os.chmod(base, 0o755)
    data = base / "data"
    pwfile = base / "pw"
    pwfile.write_text("admin-secret\n")
    shutil.chown(base, "postgres")
    shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data), "-U",
                        "postgres", f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=peer",
                        "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"initdb failed: {exc.stderr}") from exc
    cluster = Cluster(data, port)
    cluster.ctl("start", "-w", "-l", str(base / "log"), "-o",
                f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        yield cluster
    finally:
        cluster.ctl("stop", "-m", "immediate")
        shutil.rmtree(base, ignore_errors=True)


def test_pg_hba_admits_each_role_only_from_its_hosts(cluster: Cluster, tmp_path: Path) -> None:
    # Phase 1: this machine is the operator's, the web and the model host.
    cluster.use_hba(db_accounts.render_pg_hba({"web": ["127.0.0.1"], "model": ["127.0.0.1"]}, ["127.0.0.1"],
                                              connection="host"))
    admin = f"host=127.0.0.1 port={cluster.port} user=postgres password=admin-secret dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE doctag")
        for role in db_accounts.SERVICE_DB_ROLES:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    files = db_accounts.ensure_passwords(admin.replace("dbname=postgres", "dbname=doctag"), tmp_path)
    password = {role: path.read_text().strip() for role, path in files.items()}

    with cluster.connect("doctag_upload", password["doctag_upload"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("doctag_upload",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        cluster.connect("doctag_upload", password["doctag_search"])
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
        cluster.connect("doctag_gateway", password["doctag_gateway"])  # not a gateway host

    # Phase 2: this machine is a tagging host: nothing it tries gets a connection.
    cluster.use_hba(db_accounts.render_pg_hba({"api-gw": ["10.0.1.10"], "web": ["10.0.2.11"],
                                               "model": ["10.0.4.10"]}, ["10.0.9.10"], connection="host"))
    for role in ("doctag_upload", "doctag_search", "postgres"):
        with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects connection"):
            cluster.connect(role, password.get(role, "admin-secret"))


# ------------------------------------------------------------------ RabbitMQ users in a vhost of their own


@dataclass(frozen=True)
class Broker:
    vhost: str
    topology: Topology
    urls: dict[str, str]  # role -> URL with the password


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to set up the broker's users")
    name = f"doctag-test-{SESSION_ID}-acl"
    topology = Topology(prefix=name)
    files = amqp_accounts.ensure(name, name, topology, tmp_path_factory.mktemp("amqp"))
    users = amqp_accounts.users(name, topology)
    urls = {role: amqp_accounts.url("127.0.0.1", 5672, name, users[role].name, path.read_text().strip())
            for role, path in files.items()}
    try:
        for path in files.values():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
        asyncio.run(amqp_accounts.declare_topology(urls["admin"], topology))
        yield Broker(name, topology, urls)
    finally:
        amqp_accounts.remove(name, name, topology)


@pytest.fixture
async def connections(broker: Broker) -> AsyncIterator[dict[str, aio_pika.abc.AbstractConnection]]:
    conns = {role: await aio_pika.connect(broker.urls[role], timeout=10) for role in ("upload", "tagging-worker",
                                                                                       "admin")}
    yield conns
    for conn in conns.values():
        await conn.close()


async def test_upload_publishes_jobs_but_cannot_consume_or_configure(broker: Broker, connections) -> None:  # type: ignore[no-untyped-def]
    channel = await connections["upload"].channel(publisher_confirms=True)
    events, _ = await broker.topology.open(channel, declare=False)
    await events.publish(aio_pika.Message(b'{"job": 1}'), routing_key=DOCUMENT_UPLOADED, mandatory=True)
    async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        raise AssertionError("upload consumed a job")

    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        queue = await (await connections["upload"].channel()).get_queue(broker.topology.jobs_queue)
        await queue.consume(take)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await (await connections["upload"].channel()).declare_queue(f"{broker.vhost}.mine", durable=True)
    # The tagging queue screen: depths by passive declaration, dead letters read (and a retried one acked).
    dead_letters = DeadLetters(broker.urls["upload"], broker.topology)
    try:
        depth = await dead_letters.depth()
        assert depth.jobs_waiting >= 1 and depth.workers == 0
        assert isinstance(await dead_letters.peek(tenant_id=None, limit=5), list)
    finally:
        await dead_letters.close()


async def test_the_worker_consumes_jobs_but_cannot_publish_events(broker: Broker, connections) -> None:  # type: ignore[no-untyped-def]
    admin = await connections["admin"].channel(publisher_confirms=True)
    events = await admin.get_exchange(broker.topology.events_exchange)
    await events.publish(aio_pika.Message(b'{"job": 2}'), routing_key=DOCUMENT_UPLOADED)
    channel = await connections["tagging-worker"].channel(publisher_confirms=True)
    _, jobs = await broker.topology.open(channel, declare=False)
    message = await jobs.get(timeout=5, fail=True)
    assert message is not None
    # A deferral goes back to the jobs queue; a rejected job goes to the dead-letter queue.
    await channel.default_exchange.publish(aio_pika.Message(message.body), routing_key=broker.topology.jobs_queue)
    await message.reject(requeue=False)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        other = await connections["tagging-worker"].channel(publisher_confirms=True)
        forged = await other.get_exchange(broker.topology.events_exchange)
        await forged.publish(aio_pika.Message(b'{"forged": true}'), routing_key=DOCUMENT_UPLOADED)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
        await (await connections["tagging-worker"].channel()).queue_delete(broker.topology.jobs_queue)


async def test_guest_has_no_access_to_the_vhost(broker: Broker) -> None:
    guest = AMQP_URL.rstrip("/") + "/" + broker.vhost
    # The broker answers the connection's open with a close (530 NOT_ALLOWED: no access to the vhost).
    with pytest.raises((aiormq.exceptions.ConnectionNotAllowed, aiormq.exceptions.InvalidFrameError)):
        await aio_pika.connect(guest, timeout=10)

