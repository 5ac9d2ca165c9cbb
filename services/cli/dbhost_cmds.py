"""`doctag dbhost ...`: the db VM's commands (dbhost.py does the work), run on the db host as root.

Hosts without systemd (and the multi-host test) use `setup --no-systemd`, then `start`, `stop`,
`restart`, `status` with the same `--data-root`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import admin, vm_layout
from .dbhost_config import DEFAULT_ROOT, PG_BIN, DbHostConfig, host_memory_mib
from .dbhost_servers import DbHostError


def _config(args: argparse.Namespace) -> DbHostConfig:
    cfg = DbHostConfig.load(args.data_root)
    if args.address and args.address != cfg.address:
        raise admin.AdminError(f"--address {args.address}: the db host in {args.data_root} was set up for "
                               f"{cfg.address}; run `doctag dbhost setup` again to move it")
    return cfg


def cmd_setup(settings: Any, args: argparse.Namespace) -> None:
    from . import dbhost

    try:
        hosts = dbhost.read_hosts(args.inventory)
        me = dbhost.db_host(hosts, args.host)
        cfg = DbHostConfig(root=args.data_root.resolve(), address=me.address, host_name=me.name,
                           pg_port=args.pg_port, amqp_port=args.amqp_port, amqps_port=args.amqps_port,
                           redis_port=args.redis_port, rabbit_node=args.rabbit_node,
                           rabbit_dist_port=args.rabbit_dist_port, database=args.database or settings.db_name,
                           amqp_vhost=settings.amqp_vhost, amqp_prefix=settings.amqp_prefix,
                           memory_mib=args.memory_mib if args.memory_mib is not None else host_memory_mib())
        systemd = args.systemd if args.systemd is not None else Path("/run/systemd/system").is_dir()
        changes = dbhost.setup(cfg, hosts, secrets_dir=args.secrets_dir.resolve(), pki_dir=args.pki_dir.resolve(),
                               systemd=systemd)
    except (DbHostError, FileNotFoundError) as exc:
        raise admin.AdminError(str(exc)) from None
    print("changed: " + "; ".join(changes) if changes else "unchanged: the db host was set up like this already")


def cmd_control(settings: Any, args: argparse.Namespace) -> None:
    from . import dbhost_servers

    only = args.only or list(dbhost_servers.SERVERS)
    try:
        cfg = _config(args)
        if args.action in ("stop", "restart"):
            dbhost_servers.stop(cfg, only)
        if args.action in ("start", "restart"):
            dbhost_servers.start(cfg, only)
    except (DbHostError, FileNotFoundError) as exc:
        raise admin.AdminError(str(exc)) from None
    state = dbhost_servers.status(cfg)
    for name in dbhost_servers.SERVERS:
        print(f"{name}: {'running' if state[name] else 'stopped'}")
    if args.action == "status" and not all(state[name] for name in only):
        raise admin.AdminError("not every server is running")


def cmd_backup(settings: Any, args: argparse.Namespace) -> None:
    from . import dbhost

    try:
        cfg = _config(args)
        path = dbhost.backup(cfg)
        removed = dbhost.prune(cfg, args.keep)
    except (DbHostError, FileNotFoundError) as exc:
        raise admin.AdminError(str(exc)) from None
    print(f"base backup in {path} (verified); with the WAL archive it restores with `doctag dbhost restore`")
    if removed:
        print(f"removed older backups {', '.join(p.name for p in removed)} and the WAL archived before the oldest kept")


def cmd_restore(settings: Any, args: argparse.Namespace) -> None:
    from . import dbhost

    try:
        cfg = _config(args)
        sockets = dbhost.restore(cfg, args.backup.resolve(), args.target.resolve(), args.port, until=args.until)
    except (DbHostError, FileNotFoundError) as exc:
        raise admin.AdminError(str(exc)) from None
    print(f"restored into {args.target}, running on port {args.port} (socket in {sockets}, log "
          f"{sockets / 'postgres.log'}); check it with\n"
          f"  psql -h {sockets} -p {args.port} -U postgres {cfg.database}\n"
          f"stop it with\n  runuser -u postgres -- {PG_BIN / 'pg_ctl'} -D {args.target} stop")


def add_commands(dbh: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the db host's commands to the `doctag dbhost` group."""
    setup = dbh.add_parser("setup", help="configure and start the db host's servers from the inventory (idempotent)")
    setup.add_argument("--inventory", type=Path, required=True)
    setup.add_argument("--host", required=True, help="this db host's name in the inventory")
    setup.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    setup.add_argument("--secrets-dir", type=Path, default=Path("/etc/doctag/secrets"),
                       help="service passwords (db/, amqp/, redis/): kept when present, else created")
    setup.add_argument("--pki-dir", type=Path, default=Path("/etc/doctag/pki"),
                       help="the platform CA (ca.crt + ca.key) or db.crt/db.key/ca.crt issued for this host")
    setup.add_argument("--pg-port", type=int, default=vm_layout.POSTGRES_PORT)
    setup.add_argument("--amqp-port", type=int, default=vm_layout.RABBITMQ_PORT)
    setup.add_argument("--amqps-port", type=int, default=vm_layout.RABBITMQ_PORT - 1)
    setup.add_argument("--redis-port", type=int, default=vm_layout.REDIS_PORT)
    setup.add_argument("--rabbit-node", default="doctag-db@localhost")
    setup.add_argument("--rabbit-dist-port", type=int, default=25672)
    setup.add_argument("--database", default=None, help="default: DOCTAG_DB_NAME")
    setup.add_argument("--memory-mib", type=int, default=None,
                       help="memory PostgreSQL is sized from (shared_buffers a quarter of it); default: this "
                            "host's; 0 leaves PostgreSQL's defaults")
    mode = setup.add_mutually_exclusive_group()
    mode.add_argument("--systemd", dest="systemd", action="store_true", default=None,
                      help="run the servers as systemd units (default when systemd runs)")
    mode.add_argument("--no-systemd", dest="systemd", action="store_false",
                      help="start them directly (pg_ctl, rabbitmq-server, redis-server)")
    setup.set_defaults(func=cmd_setup)
    for action, text in (("start", "start the servers (hosts without systemd)"), ("stop", "stop them"),
                         ("restart", "stop and start them"), ("status", "say which run (exit 1 unless all do)")):
        p = dbh.add_parser(action, help=text)
        p.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
        p.add_argument("--address", default=None, help="refuse unless the db host was set up for this address")
        p.add_argument("--only", action="append", choices=["postgres", "rabbitmq", "redis"])
        p.set_defaults(func=cmd_control)
    bk = dbh.add_parser("backup", help="base backup into <data root>/postgres/backups/<UTC time> (verified)")
    bk.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    bk.add_argument("--address", default=None)
    bk.add_argument("--keep", type=int, default=0, help="keep this many newest base backups and the WAL they need "
                    "(default 0: keep everything)")
    bk.set_defaults(func=cmd_backup)
    rs = dbh.add_parser("restore", help="restore a base backup plus the WAL archive into a new data directory "
                        "and start it on another port")
    rs.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    rs.add_argument("--address", default=None)
    rs.add_argument("--backup", type=Path, required=True)
    rs.add_argument("--target", type=Path, required=True, help="new data directory (must not exist)")
    rs.add_argument("--port", type=int, default=5433)
    rs.add_argument("--until", default=None, help="recovery target time, e.g. '2026-11-30 11:00:00+00' "
                    "(default: everything archived)")
    rs.set_defaults(func=cmd_restore)
