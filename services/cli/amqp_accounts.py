"""RabbitMQ accounts of the services: a dedicated vhost, a user per role with only the permissions
its work needs, and an administrator that declares the topology once (`make up`).

Set up with `rabbitmqctl` on the broker's host (the local one for `make up`; it needs the broker's
Erlang cookie, so root or the rabbitmq user). Passwords are generated once and kept in one file per
user (0600, under the state dir), handed to `rabbitmqctl` on standard input, never on a command line.

Permissions (RabbitMQ's configure / write / read regular expressions, per vhost):

- `<prefix>-upload` (the outbox relay, and the tagging queue screen): configure nothing, write the
  events exchange, read the dead-letter queue (to show dead-lettered jobs and remove a retried
  one; queue depths are passive declarations, which need no permission);
- `<prefix>-tagging-worker`: configure nothing, write the dead-letter exchange and `amq.default` (a
  deferred job goes back to the jobs queue), read the jobs queue;
- `<prefix>-model-serving`: configure nothing, write `amq.default` (a training job to its priority's
  queue), read nothing;
- `<prefix>-training-worker`: configure nothing, write `amq.default` (a reaped job published again, or
  to the training dead-letter queue), read the two training queues;
- `<prefix>-admin` (set-up only): everything in the vhost.

The guest user gets no permission on the vhost.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from services.common.amqp import Topology
from services.common.training_queue import PRIORITIES, TrainingTopology

from .db_accounts import read_or_create_password

NOTHING = "^$"


class AmqpAccountsError(Exception):
    """The broker's users could not be set up (no rabbitmqctl, not allowed, ...); the message says why."""


@dataclass(frozen=True)
class AmqpUser:
    name: str
    configure: str
    write: str
    read: str
    tags: str = ""


def users(prefix: str, topology: Topology) -> dict[str, AmqpUser]:
    """Role → its user and permissions (see the module docstring)."""
    def exact(*names: str) -> str:
        return "^(" + "|".join(re.escape(n) for n in names) + ")$"

    training = TrainingTopology(prefix=topology.prefix)

    return {
        "upload": AmqpUser(f"{prefix}-upload", NOTHING, exact(topology.events_exchange),
                           exact(topology.dead_letter_queue)),
        "tagging-worker": AmqpUser(f"{prefix}-tagging-worker", NOTHING,
                                   exact(topology.dead_letter_exchange, "amq.default"), exact(topology.jobs_queue)),
        "model-serving": AmqpUser(f"{prefix}-model-serving", NOTHING, exact("amq.default"), NOTHING),
        "training-worker": AmqpUser(f"{prefix}-training-worker", NOTHING, exact("amq.default"),
                                    exact(*(training.queue(p) for p in PRIORITIES))),
        "admin": AmqpUser(f"{prefix}-admin", ".*", ".*", ".*", tags="administrator"),
    }


class Rabbitmqctl:
    """rabbitmqctl of the local broker, or (`prefix`, `node`) of a node of its own: the db host runs
    it as `runuser -u rabbitmq -- env HOME=... rabbitmqctl -n <node>` (its cookie, its node name)."""

    def __init__(self, executable: str = "rabbitmqctl", *, prefix: Sequence[str] = (), node: str | None = None
                 ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise AmqpAccountsError(f"{executable} not found: run the RabbitMQ set-up on the broker's host")
        self.executable = path
        self.argv = [*prefix, path, *(["-n", node] if node else [])]

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.argv, "-q", *args], input=stdin, capture_output=True, text=True,
                                timeout=120)
        if check and result.returncode != 0:
            raise AmqpAccountsError(f"rabbitmqctl {args[0]}: {(result.stderr or result.stdout).strip()[:500]}")
        return result

    def existing_users(self) -> set[str]:
        out = self.run("list_users", "--no-table-headers").stdout
        return {line.split("\t")[0] for line in out.splitlines() if line.strip()}

    def existing_vhosts(self) -> set[str]:
        out = self.run("list_vhosts", "--no-table-headers").stdout
        return {line.strip() for line in out.splitlines() if line.strip()}


def ensure(vhost: str, prefix: str, topology: Topology, secrets_dir: Path, ctl: Rabbitmqctl | None = None,
           ) -> dict[str, Path]:
    """Creates (or brings up to date) the vhost, the users and their permissions; returns role →
    password file. Idempotent: existing passwords are kept (and set again, in case they were changed)."""
    ctl = ctl or Rabbitmqctl()
    if vhost not in ctl.existing_vhosts():
        ctl.run("add_vhost", vhost)
    present = ctl.existing_users()
    files: dict[str, Path] = {}
    for role, user in users(prefix, topology).items():
        path = secrets_dir / user.name
        password = read_or_create_password(path)
        if user.name in present:
            ctl.run("change_password", user.name, stdin=password + "\n")
        else:
            ctl.run("add_user", user.name, stdin=password + "\n")
        ctl.run("set_user_tags", user.name, *([user.tags] if user.tags else []))
        ctl.run("set_permissions", "-p", vhost, user.name, user.configure, user.write, user.read)
        files[role] = path
    if "guest" in present:
        ctl.run("clear_permissions", "-p", vhost, "guest", check=False)
    return files


def remove(vhost: str, prefix: str, topology: Topology, ctl: Rabbitmqctl | None = None) -> None:
    """Deletes the vhost (with its queues) and the users (tests)."""
    ctl = ctl or Rabbitmqctl()
    ctl.run("delete_vhost", vhost, check=False)
    for user in users(prefix, topology).values():
        ctl.run("delete_user", user.name, check=False)


async def declare_topology(admin_url: str, topology: Topology) -> None:
    """Declares the exchanges and queues as the vhost's administrator (the services cannot)."""
    import aio_pika

    connection = await aio_pika.connect(admin_url, timeout=10)
    try:
        channel = await connection.channel()
        await topology.declare(channel)
        await TrainingTopology(prefix=topology.prefix, delivery_limit=topology.delivery_limit).declare(channel)
    finally:
        await connection.close()


def url(host: str, port: int, vhost: str, user: str, password: str | None = None) -> str:
    """An AMQP URL for `user` on `vhost` (the password left out when None: DOCTAG_AMQP_PASSWORD_FILE)."""
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return f"amqp://{auth}@{host}:{port}/{quote(vhost, safe='')}"
