"""`doctag`: the operator's command line (database, tenants, users, keys, the local stack)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.common.roles import ROLES
from services.common.settings import CommonSettings

from . import admin, model_quality_cmds, model_registry_cmds, search_cmds


class OpsSettings(CommonSettings):
    service_name: str = "doctag-cli"
    # Migrations and tenant/user administration run as a role that owns the schemas.
    db_admin_user: str = "postgres"
    db_admin_password: str = ""

    def admin_dsn(self) -> str:
        return self.dsn(user=self.db_admin_user, password=self.db_admin_password)


def _read_password(args: argparse.Namespace) -> str:
    if not args.password_stdin:
        raise admin.AdminError("give the password on standard input with --password-stdin (never on the command line)")
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise admin.AdminError("no password was given on standard input")
    return password


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, default=str, ensure_ascii=False))


def cmd_db_upgrade(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common.migrate import upgrade

    upgrade(settings, user=settings.db_admin_user, password=settings.db_admin_password, revision=args.revision)
    print(f"database {settings.db_name} is at migration {args.revision}")


def cmd_keys_ensure(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common.auth import ensure_keypair

    private, public = ensure_keypair(settings.state_dir / "keys")
    print(f"signing keys: {private} (private, keep secret), {public} (public)")


def cmd_tenant_create(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.create_tenant(settings.admin_dsn(), args.slug, args.name, args.storage_quota).message)


def cmd_tenant_list(settings: OpsSettings, args: argparse.Namespace) -> None:
    _print_rows(admin.list_tenants(settings.admin_dsn()))


def cmd_user_create(settings: OpsSettings, args: argparse.Namespace) -> None:
    password = _read_password(args)
    print(admin.create_user(settings.admin_dsn(), args.slug, args.username, password, args.role).message)


def cmd_user_set_password(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.set_password(settings.admin_dsn(), args.slug, args.username, _read_password(args)).message)


def cmd_user_set_role(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.set_role(settings.admin_dsn(), args.slug, args.username, args.role).message)


def cmd_user_list(settings: OpsSettings, args: argparse.Namespace) -> None:
    _print_rows(admin.list_users(settings.admin_dsn(), args.slug))


def cmd_amqp_definitions(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common.amqp import Topology

    text = json.dumps(Topology(prefix=settings.amqp_prefix).definitions(), indent=2) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")


def _layout(settings: OpsSettings):  # type: ignore[no-untyped-def]
    from .stack import StackLayout

    return StackLayout(state_dir=settings.state_dir)


def cmd_stack_up(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common.migrate import upgrade

    from .dependencies import check

    missing = check(settings, settings.db_admin_user, settings.db_admin_password)
    if missing:
        raise admin.AdminError("cannot start the platform:\n" + "\n".join(f"- {m}" for m in missing))
    print(f"PostgreSQL {settings.db_host}:{settings.db_port} and RabbitMQ reachable")
    _require_model()
    upgrade(settings, user=settings.db_admin_user, password=settings.db_admin_password)
    print(f"database {settings.db_name} migrated")
    _index_unindexed_documents(settings)
    print(model_registry_cmds.ensure_shipped_model(settings))
    layout = _layout(settings)
    layout.start()
    print("services started under supervisor; waiting until every one is ready ...")
    layout.wait_ready(timeout=args.timeout)
    print(layout.status())
    print(f"""The platform is running.

  Web UI:    {layout.gateway_url}/   (in Korean: log in with the department code, user and password)
  Gateway:   {layout.gateway_url}   (API under /api/v1, OpenAPI of each service at its /openapi.json)
  Logs:      make logs   (files in {layout.log_dir})
  Stop:      make down

To log in, create a department (tenant) and a user, then open the web UI or ask the gateway for a token:

  .venv/bin/doctag tenant create demo --name "데모 부서"
  echo 'choose-a-password' | .venv/bin/doctag user create demo alice --password-stdin --role tenant_admin
  curl -s -X POST {layout.gateway_url}/api/v1/auth/token -H 'Content-Type: application/json' \\
       -d '{{"tenant": "demo", "username": "alice", "password": "choose-a-password"}}'
""")


def _index_unindexed_documents(settings: OpsSettings) -> None:
    """Documents stored before ranked search (migration 0004) have no postings: index them once."""
    import asyncio

    from .search_cmds import reindex

    done = asyncio.run(reindex(settings.admin_dsn(), only_missing=True))
    if sum(done.values()):
        print(f"search index: {sum(done.values())} documents indexed")


def _require_model() -> None:
    """The tagging model must be there before model-serving starts (it is committed; `make train` rebuilds it)."""
    from services.model_serving.settings import ModelServingSettings

    model_dir = ModelServingSettings().model_dir
    if not (model_dir / "manifest.json").is_file():
        raise admin.AdminError(f"no tagging model in {model_dir} (manifest.json missing): run `make train` "
                               "to train it from ../shared/data, or set DOCTAG_MODEL_DIR to a model directory")
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("architecture") == "e5-hybrid":
        from services.model_serving.models.e5_base import (
            BaseModelMissing,
            find_base_file,
        )

        try:
            find_base_file()
        except BaseModelMissing as exc:
            raise admin.AdminError(str(exc)) from None
    print(f"tagging model {manifest.get('name')} version {manifest.get('version')} in {model_dir}")


def cmd_stack_down(settings: OpsSettings, args: argparse.Namespace) -> None:
    print("stopped" if _layout(settings).stop() else "the platform was not running")


def cmd_stack_status(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(_layout(settings).status())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="doctag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    up = db.add_parser("upgrade", help="apply migrations (creates the database if missing)")
    up.add_argument("--revision", default="head")
    up.set_defaults(func=cmd_db_upgrade)

    keys = sub.add_parser("keys", help="token signing keys").add_subparsers(dest="action", required=True)
    keys.add_parser("ensure", help="create the RS256 key pair under the state dir if missing").set_defaults(
        func=cmd_keys_ensure)

    tenant = sub.add_parser("tenant", help="departments").add_subparsers(dest="action", required=True)
    tc = tenant.add_parser("create", help="create a tenant (idempotent; updates name/quota when it exists)")
    tc.add_argument("slug")
    tc.add_argument("--name", required=True)
    tc.add_argument("--storage-quota", type=int, default=None, metavar="BYTES",
                    help=f"storage quota in bytes (default {admin.DEFAULT_QUOTA_BYTES})")
    tc.set_defaults(func=cmd_tenant_create)
    tenant.add_parser("list", help="list tenants with quota usage").set_defaults(func=cmd_tenant_list)

    user = sub.add_parser("user", help="users of a tenant").add_subparsers(dest="action", required=True)
    uc = user.add_parser("create", help="create a user (idempotent with the same password and role)")
    uc.add_argument("slug")
    uc.add_argument("username")
    uc.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    uc.add_argument("--role", default="user", choices=ROLES)
    uc.set_defaults(func=cmd_user_create)
    up_ = user.add_parser("set-password", help="change a user's password")
    up_.add_argument("slug")
    up_.add_argument("username")
    up_.add_argument("--password-stdin", action="store_true")
    up_.set_defaults(func=cmd_user_set_password)
    ur = user.add_parser("set-role", help="change a user's role")
    ur.add_argument("slug")
    ur.add_argument("username")
    ur.add_argument("--role", required=True, choices=ROLES)
    ur.set_defaults(func=cmd_user_set_role)
    ul = user.add_parser("list", help="list a tenant's users")
    ul.add_argument("slug")
    ul.set_defaults(func=cmd_user_list)

    amqp = sub.add_parser("amqp", help="RabbitMQ topology").add_subparsers(dest="action", required=True)
    ad = amqp.add_parser("definitions", help="write the topology in RabbitMQ definitions format")
    ad.add_argument("--output", default="-")
    ad.set_defaults(func=cmd_amqp_definitions)

    # `doctag model ...`: one group; the registry commands live in model_registry_cmds.
    model = sub.add_parser("model", help="tagging models: registry, aliases, inference log").add_subparsers(
        dest="action", required=True)
    model_registry_cmds.add_commands(model)
    model_quality_cmds.add_commands(model)

    search = sub.add_parser("search", help="search quality and index").add_subparsers(dest="action", required=True)
    search_cmds.add_commands(search)

    stack = sub.add_parser("stack", help="the whole platform as local processes").add_subparsers(
        dest="action", required=True)
    su = stack.add_parser("up", help="check dependencies, migrate, start every service, wait until ready")
    su.add_argument("--timeout", type=float, default=300.0)
    su.set_defaults(func=cmd_stack_up)
    stack.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_stack_down)
    stack.add_parser("status", help="state of every service").set_defaults(func=cmd_stack_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    settings = OpsSettings()
    try:
        args.func(settings, args)
    except admin.AdminError as exc:
        print(f"doctag: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"doctag: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
