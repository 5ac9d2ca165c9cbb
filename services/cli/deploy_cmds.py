"""`doctag deploy role|all|rollback`: the Makefile's deploy-<role>, deploy-all and rollback-<role>."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import vm_layout


def _deployer(args: argparse.Namespace) -> Any:
    from .deploy import Deployer, Transport
    from .inventory import load_inventory

    inv = load_inventory(args.inventory)
    return Deployer(inv, transport=Transport(args.ssh or None), dist=args.dist, version=args.version,
                    state_root=args.state, inventory_text=Path(args.inventory).read_text(encoding="utf-8"),
                    ready_timeout=args.timeout)


def _report(outcomes: list[Any]) -> None:
    for o in outcomes:
        print(o.line())


def _file_sd(deployer: Any, args: argparse.Namespace) -> None:
    from .deploy import write_prometheus_targets

    path = args.file_sd or deployer.state.root / "prometheus" / "doctag.json"
    print(write_prometheus_targets(deployer.inv, path))


def cmd_role(settings: Any, args: argparse.Namespace) -> None:
    from .deploy import deploy_role

    deployer = _deployer(args)
    _report(deploy_role(deployer, args.role, args.host))
    _file_sd(deployer, args)


def cmd_all(settings: Any, args: argparse.Namespace) -> None:
    from .deploy import deploy_all

    deployer = _deployer(args)
    _report(deploy_all(deployer))
    _file_sd(deployer, args)


def cmd_rollback(settings: Any, args: argparse.Namespace) -> None:
    from .inventory import InventoryError

    deployer = _deployer(args)
    hosts = [deployer.inv.host(args.host)] if args.host else deployer.inv.of_role(args.role)
    wrong = [h.name for h in hosts if h.role != args.role]
    if wrong or not hosts:
        raise InventoryError(f"{args.inventory}: {', '.join(wrong) or 'no host'} of role {args.role}")
    _report([deployer.rollback(h) for h in hosts])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inventory", required=True, type=Path, help="e.g. infra/inventory.example.yaml")
    p.add_argument("--ssh", default=None, help='how to reach a host: "ssh -F cfg" (user@host appended), or a '
                                               'template with {name} {address} {ssh_host} {user} {port}')
    p.add_argument("--dist", type=Path, default=Path("dist"), help="where the bundles are (make bundle)")
    p.add_argument("--version", default=None, help="bundle version (default: this tree's, `doctag release version`)")
    p.add_argument("--state", type=Path, default=None, help="operator state (default var/deploy/<deployment>)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness per host")
    p.add_argument("--file-sd", type=Path, default=None,
                   help="where to write Prometheus' file_sd targets of the inventory's hosts (default "
                        "var/deploy/<deployment>/prometheus/doctag.json; e.g. /etc/prometheus/file_sd/doctag.json)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    deploy = sub.add_parser("deploy", help="deploy bundles to the inventory's hosts over SSH").add_subparsers(
        dest="action", required=True)
    r = deploy.add_parser("role", help="deploy one role (to one --host, or every host of the role)")
    r.add_argument("role", choices=[x.name for x in vm_layout.ROLES])
    r.add_argument("--host", default=None)
    _common(r)
    r.set_defaults(func=cmd_role)
    a = deploy.add_parser("all", help="every host, in dependency order (db, model, gateway, web, tagging)")
    _common(a)
    a.set_defaults(func=cmd_all)
    b = deploy.add_parser("rollback", help="switch hosts of a role back to their previous version, restart them")
    b.add_argument("role", choices=[x.name for x in vm_layout.ROLES])
    b.add_argument("--host", default=None, help="only this host (default: every host of the role)")
    _common(b)
    b.set_defaults(func=cmd_rollback)
