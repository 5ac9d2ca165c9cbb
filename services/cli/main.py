"""`doctag`: the operator's command line (database, tenants, users, keys, the local stack)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.pki import SERVER_ONLY_ROLES, SERVICE_ROLES
from services.common.roles import ROLES
from services.common.settings import CommonSettings

from . import admin, dbhost_cmds, deploy_cmds, model_quality_cmds, model_registry_cmds, release_cmds, search_cmds

if TYPE_CHECKING:
    from .stack import ServiceAccounts


class OpsSettings(CommonSettings):
    service_name: str = "doctag-cli"
    # Migrations and tenant/user administration run as a role that owns the schemas.
    db_admin_user: str = "postgres"
    db_admin_password: str = ""
    # The RabbitMQ vhost `make up` gives the services (their own users, guest not allowed).
    amqp_vhost: str = "doctag"

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


def cmd_db_hba(settings: OpsSettings, args: argparse.Namespace) -> None:
    from .db_accounts import render_pg_hba

    hosts = {"api-gw": args.api_gw or [], "web": args.web or [], "model": args.model or []}
    sys.stdout.write(render_pg_hba(hosts, args.admin or [], database=args.database or settings.db_name,
                                   connection="host" if args.no_ssl else "hostssl"))


def cmd_db_passwords(settings: OpsSettings, args: argparse.Namespace) -> None:
    from .db_accounts import ensure_passwords

    directory = args.dir or settings.state_dir / "secrets" / "db"
    for role, path in ensure_passwords(settings.admin_dsn(), directory).items():
        print(f"{role}: {path} (0600)")


def cmd_keys_ensure(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common import capability
    from services.common.auth import ensure_keypair

    private, public = ensure_keypair(settings.state_dir / "keys")
    print(f"signing keys: {private} (private, keep secret), {public} (public)")
    cap_private, cap_public = capability.ensure_keypair(settings.capability_private_key_path.parent)
    print(f"job capability keys: {cap_private} (upload only), {cap_public} (upload, model-serving)")


def cmd_pki_init(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common import pki

    pki_dir = args.dir or settings.pki_dir
    try:
        cert, created = pki.init_ca(pki_dir)
    except pki.PkiError as exc:
        raise admin.AdminError(str(exc)) from None
    if created:
        print(f"platform CA created: {cert} (distribute), {pki.ca_paths(pki_dir)[1]} (0600; keep it offline "
              "once the certificates are issued)")
    else:
        print(f"the platform CA exists already: {cert} (unchanged)")


def cmd_pki_issue(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common import pki

    try:
        issued = pki.issue(args.dir or settings.pki_dir, args.role, hosts=args.host or ["localhost"],
                           ips=args.ip or [], days=args.days, out_dir=args.out)
    except pki.PkiError as exc:
        raise admin.AdminError(str(exc)) from None
    print(f"{issued.cert_path} and {issued.key_path} (0600): role {issued.role} "
          f"({pki.role_uri(issued.role)}), valid until {issued.not_after:%Y-%m-%d %H:%M} UTC")


def cmd_probe(settings: OpsSettings, args: argparse.Namespace) -> None:
    """GET a service's URL (health checks): https with the certificate of `--role`."""
    import httpx

    from services.common.tls import ReloadingSSLContext, TlsFiles

    ca, _, _ = settings.tls_paths()
    verify: Any = True
    if args.url.startswith("https://"):
        cert, key = settings.pki_dir / f"{args.role}.crt", settings.pki_dir / f"{args.role}.key"
        verify = ReloadingSSLContext(TlsFiles(ca, cert, key), server=False).context
    try:
        status = httpx.get(args.url, verify=verify, timeout=args.timeout).status_code
    except httpx.HTTPError as exc:
        raise admin.AdminError(f"{args.url}: {exc.__class__.__name__}: {exc}") from None
    if status != 200:
        raise admin.AdminError(f"{args.url} answered {status}")
    print(f"{args.url}: 200")


def cmd_manifests_k8s(settings: OpsSettings, args: argparse.Namespace) -> None:
    from . import k8s_manifests

    if args.check:
        problems = k8s_manifests.stale(args.out)
        if problems:
            raise admin.AdminError(f"{args.out} is not the generator's output ({', '.join(problems)}); "
                                   f"run `doctag manifests k8s --out {args.out}`")
        print(f"{args.out}: up to date")
        return
    for path in k8s_manifests.write(args.out):
        print(path)


def cmd_manifests_compose_gateway(settings: OpsSettings, args: argparse.Namespace) -> None:
    from . import k8s_manifests

    args.out.write_text(k8s_manifests.compose_gateway_config(), encoding="utf-8")
    print(args.out)


def cmd_keys_rotate(settings: OpsSettings, args: argparse.Namespace) -> None:
    from services.common.auth import rotate_keypair

    kid, kept = rotate_keypair(settings.state_dir / "keys")
    print(f"new signing key {kid}; tokens signed with any of {', '.join(kept)} are accepted "
          "(the gateway and the services pick the change up without a restart)")


def cmd_apikey_create(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.create_api_key(settings.admin_dsn(), args.slug, args.name, args.role or ["user"]).message)


def cmd_apikey_list(settings: OpsSettings, args: argparse.Namespace) -> None:
    _print_rows(admin.list_api_keys(settings.admin_dsn(), args.slug))


def cmd_apikey_revoke(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.revoke_api_key(settings.admin_dsn(), args.slug, args.id).message)


def cmd_tenant_create(settings: OpsSettings, args: argparse.Namespace) -> None:
    print(admin.create_tenant(settings.admin_dsn(), args.slug, args.name, args.storage_quota,
                              args.api_daily_quota).message)


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


def _layout(settings: OpsSettings, accounts=None):  # type: ignore[no-untyped-def]
    from .stack import StackLayout

    return StackLayout(state_dir=settings.state_dir, accounts=accounts)


def _service_accounts(settings: OpsSettings) -> ServiceAccounts:
    """Each service's own PostgreSQL password, and (with rabbitmqctl on this host) its own RabbitMQ
    user in the vhost `DOCTAG_AMQP_VHOST`, the topology declared once by that vhost's administrator."""
    import asyncio
    from urllib.parse import urlsplit

    from services.common.amqp import Topology

    from . import amqp_accounts, db_accounts
    from .stack import ServiceAccounts

    secrets = settings.state_dir / "secrets"
    db_files = db_accounts.ensure_passwords(settings.admin_dsn(), secrets / "db")
    print(f"PostgreSQL: a password per service role (scram-sha-256), in {secrets / 'db'} (0600)")
    topology = Topology(prefix=settings.amqp_prefix)
    parts = urlsplit(settings.amqp_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    try:
        amqp_files = amqp_accounts.ensure(settings.amqp_vhost, settings.amqp_prefix, topology, secrets / "amqp")
    except amqp_accounts.AmqpAccountsError as exc:
        print(f"RabbitMQ users not set up ({exc}); the services use DOCTAG_AMQP_URL as it is")
        return ServiceAccounts(db_files)
    names = amqp_accounts.users(settings.amqp_prefix, topology)
    admin_url = amqp_accounts.url(host, port, settings.amqp_vhost, names["admin"].name,
                                  amqp_files["admin"].read_text(encoding="utf-8").strip())
    asyncio.run(amqp_accounts.declare_topology(admin_url, topology))
    print(f"RabbitMQ: vhost {settings.amqp_vhost}, users {', '.join(u.name for u in names.values())} "
          f"(passwords in {secrets / 'amqp'}, 0600); guest has no access to it")
    urls = {role: amqp_accounts.url(host, port, settings.amqp_vhost, names[role].name)
            for role in ("upload", "tagging-worker", "model-serving", "training-worker")}
    return ServiceAccounts(db_files, urls, {role: amqp_files[role] for role in urls})


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
    _ensure_eval_sets(settings)
    layout = _layout(settings, _service_accounts(settings))
    layout.start()
    print("services started under supervisor; waiting until every one is ready ...")
    layout.wait_ready(timeout=args.timeout)
    print(layout.status())
    print(f"""The platform is running.

  Web UI:    {layout.gateway_url}/   (in Korean: log in with the department code, user and password)
  Gateway:   {layout.gateway_url}   (API under /api/v1; services' /openapi.json with DOCTAG_API_DOCS=true)
  Status:    {layout.gateway_status_url}   (the gateway's /healthz, /readyz, /metrics)
  Services:  https with a platform certificate only (mutual TLS; CA and certificates in {layout.pki_dir})
  Logs:      make logs   (files in {layout.log_dir})
  Stop:      make down

To log in, create a department (tenant) and a user, then open the web UI or ask the gateway for a token:

  .venv/bin/doctag tenant create demo --name "데모 부서"
  echo 'choose-a-password' | .venv/bin/doctag user create demo alice --password-stdin --role tenant_admin
  curl -s -X POST {layout.gateway_url}/api/v1/auth/token -H 'Content-Type: application/json' \\
       -d '{{"tenant": "demo", "username": "alice", "password": "choose-a-password"}}'
""")


def _ensure_eval_sets(settings: OpsSettings) -> None:
    """The fixed evaluation sets of training (model-serving's DOCTAG_EVAL_SETS_DIR, default
    <state>/eval-sets), written once from ../shared/data when it is there (the `train` extra)."""
    import os

    target = Path(os.environ.get("DOCTAG_EVAL_SETS_DIR") or settings.state_dir / "eval-sets")
    data = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
    if (target / "headlines.jsonl").is_file() or not (data / "headlines_train.jsonl").is_file():
        return
    try:
        from services.model_training.config import TrainConfig
        from services.model_training.eval_sets import write_eval_sets
    except ImportError:
        print("evaluation sets not written: the training code (train extra) is not installed")
        return
    defaults = TrainConfig()
    written = write_eval_sets(data, target, seed=defaults.seed, val_fraction=defaults.val_fraction)
    print(f"evaluation sets for training written to {target}: "
          + ", ".join(f"{task} {info['rows']} rows" for task, info in written.items()))


def _index_unindexed_documents(settings: OpsSettings) -> None:
    """Documents stored before ranked search (migration 0004) have no postings: index them once."""
    import asyncio

    from .search_cmds import reindex

    done = asyncio.run(reindex(settings.admin_dsn(), only_missing=True))
    if done["documents"]:
        print(f"search index: {done['documents']} documents indexed")


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
    hba = db.add_parser("hba", help="print pg_hba.conf for the db host: each service role from its VM role's hosts")
    hba.add_argument("--api-gw", action="append", metavar="ADDR", help="gateway host address (repeatable)")
    hba.add_argument("--web", action="append", metavar="ADDR", help="web host address (upload, search; repeatable)")
    hba.add_argument("--model", action="append", metavar="ADDR", help="model-serving host address (repeatable)")
    hba.add_argument("--admin", action="append", metavar="ADDR", help="operator host for migrations (repeatable)")
    hba.add_argument("--database", default=None, help="default: DOCTAG_DB_NAME")
    hba.add_argument("--no-ssl", action="store_true", help="`host` lines instead of `hostssl` (no TLS to PostgreSQL)")
    hba.set_defaults(func=cmd_db_hba)
    pw = db.add_parser("passwords", help="give each service role its own password (scram-sha-256; files 0600)")
    pw.add_argument("--dir", type=Path, default=None, help="default: <state dir>/secrets/db")
    pw.set_defaults(func=cmd_db_passwords)

    keys = sub.add_parser("keys", help="token signing keys").add_subparsers(dest="action", required=True)
    keys.add_parser("ensure", help="create the token (RS256) and job capability (Ed25519) key pairs if missing"
                    ).set_defaults(
        func=cmd_keys_ensure)
    keys.add_parser("rotate", help="new signing key; the last 3 public keys stay valid").set_defaults(
        func=cmd_keys_rotate)

    pki_cmd = sub.add_parser("pki", help="the platform CA and service certificates (mutual TLS)").add_subparsers(
        dest="action", required=True)
    pi = pki_cmd.add_parser("init", help="create the platform CA (ca.crt, ca.key 0600) unless it exists")
    pi.add_argument("--dir", type=Path, default=None, help="default: DOCTAG_TLS_DIR or <state dir>/pki")
    pi.set_defaults(func=cmd_pki_init)
    pis = pki_cmd.add_parser("issue", help="issue a certificate naming a role (spiffe://doctag/role/ROLE) and host")
    pis.add_argument("role", choices=(*SERVICE_ROLES, *SERVER_ONLY_ROLES))
    pis.add_argument("--host", action="append", help="DNS name of the host (repeatable; default localhost)")
    pis.add_argument("--ip", action="append", help="IP address of the host (repeatable)")
    pis.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    pis.add_argument("--dir", type=Path, default=None, help="where the CA is (default: as for init)")
    pis.add_argument("--out", type=Path, default=None, help="where to write ROLE.crt, ROLE.key and ca.crt "
                                                            "(default: the CA's directory)")
    pis.set_defaults(func=cmd_pki_issue)

    tenant = sub.add_parser("tenant", help="departments").add_subparsers(dest="action", required=True)
    tc = tenant.add_parser("create", help="create a tenant (idempotent; updates name/quota when it exists)")
    tc.add_argument("slug")
    tc.add_argument("--name", required=True)
    tc.add_argument("--storage-quota", type=int, default=None, metavar="BYTES",
                    help=f"storage quota in bytes (default {admin.DEFAULT_QUOTA_BYTES})")
    tc.add_argument("--api-daily-quota", type=int, default=None, metavar="CALLS",
                    help="calls a day through the gateway (default: DOCTAG_API_DAILY_QUOTA_DEFAULT, 10000)")
    tc.set_defaults(func=cmd_tenant_create)
    tenant.add_parser("list", help="list tenants with quota usage").set_defaults(func=cmd_tenant_list)

    apikey = sub.add_parser("apikey", help="API keys of a tenant (the gateway's key-auth)").add_subparsers(
        dest="action", required=True)
    ac = apikey.add_parser("create", help="create a key; it is printed once and stored only as a hash")
    ac.add_argument("slug")
    ac.add_argument("name")
    ac.add_argument("--role", action="append", choices=("user", "tenant_admin"),
                    help="a role of the key (repeatable; default user)")
    ac.set_defaults(func=cmd_apikey_create)
    al = apikey.add_parser("list", help="list a tenant's keys (never the keys themselves)")
    al.add_argument("slug")
    al.set_defaults(func=cmd_apikey_list)
    ar = apikey.add_parser("revoke", help="revoke a key")
    ar.add_argument("slug")
    ar.add_argument("id")
    ar.set_defaults(func=cmd_apikey_revoke)

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

    probe = sub.add_parser("probe", help="GET a service URL, with a platform certificate for https (health checks)")
    probe.add_argument("url")
    probe.add_argument("--role", default="gateway", choices=SERVICE_ROLES, help="whose certificate to present")
    probe.add_argument("--timeout", type=float, default=5.0)
    probe.set_defaults(func=cmd_probe)

    manifests = sub.add_parser("manifests", help="deployment manifests made from the VM layout").add_subparsers(
        dest="action", required=True)
    mk = manifests.add_parser("k8s", help="Kubernetes manifests (services/cli/vm_layout.py -> infra/k8s)")
    mk.add_argument("--out", type=Path, default=Path("infra/k8s"))
    mk.add_argument("--check", action="store_true", help="fail when the files differ from the generator's output")
    mk.set_defaults(func=cmd_manifests_k8s)
    mc = manifests.add_parser("compose-gateway", help="compose's kong.yml (gateway/kong.yml, the containers' targets)")
    mc.add_argument("--out", type=Path, default=Path("infra/compose/kong.yml"))
    mc.set_defaults(func=cmd_manifests_compose_gateway)

    release_cmds.add_commands(sub)
    deploy_cmds.add_commands(sub)

    stack = sub.add_parser("stack", help="the whole platform as local processes").add_subparsers(
        dest="action", required=True)
    su = stack.add_parser("up", help="check dependencies, migrate, start every service, wait until ready")
    su.add_argument("--timeout", type=float, default=300.0)
    su.set_defaults(func=cmd_stack_up)
    stack.add_parser("down", help="stop what `up` started").set_defaults(func=cmd_stack_down)
    stack.add_parser("status", help="state of every service").set_defaults(func=cmd_stack_status)
    dbhost = sub.add_parser("dbhost", help="the db VM: PostgreSQL, RabbitMQ, Redis on its private address (as "
                            "root)").add_subparsers(dest="action", required=True)
    dbhost_cmds.add_commands(dbhost)
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
    except (RuntimeError, ValueError) as exc:
        print(f"doctag: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
