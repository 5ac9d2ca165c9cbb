"""`doctag release ...`: the offline bundles (`make bundle`) and the generated systemd units."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import vm_layout


def cmd_bundle(settings: Any, args: argparse.Namespace) -> None:
    from .bundle import build, release_version

    roles = args.role or [r.name for r in vm_layout.ROLES]
    version = release_version()  # once: every role's bundle of one run has the same version
    for name in roles:
        built = build(name, args.out, cache=args.cache, version=version)
        size = built.path.stat().st_size / 1e6
        state = "unchanged, reused" if built.reused else "built"
        print(f"{built.path} ({size:.1f} MB): {state} in {built.seconds:.1f}s")


def cmd_version(settings: Any, args: argparse.Namespace) -> None:
    from .bundle import release_version

    print(release_version())


def cmd_units(settings: Any, args: argparse.Namespace) -> None:
    from . import cloud_init, units

    for path in [*units.write_committed(), *cloud_init.write_committed()]:
        print(f"wrote {path}")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = sub.add_parser("release", help="offline release bundles per VM role").add_subparsers(
        dest="action", required=True)
    b = release.add_parser("bundle", help="build dist/doctag-<version>-<role>.tar.gz (all roles by default)")
    b.add_argument("--role", action="append", choices=[r.name for r in vm_layout.ROLES],
                   help="only this role (repeatable)")
    b.add_argument("--out", type=Path, default=Path("dist"))
    b.add_argument("--cache", type=Path, default=None, help="default: var/bundle-cache")
    b.set_defaults(func=cmd_bundle)
    release.add_parser("version", help="the release version the bundles of this tree get").set_defaults(
        func=cmd_version)
    release.add_parser("units", help="rewrite infra/systemd/ and infra/cloud-init/ from vm_layout").set_defaults(
        func=cmd_units)
