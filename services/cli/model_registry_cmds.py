"""`doctag model list|versions|register|alias|purge-log`: the model registry, run as the database admin role.

The same operations as model-serving's /api/v1/models routes, for operators on the host.
Versions are copied into the model store (DOCTAG_MODEL_STORE, default <state_dir>/models)
that model-serving reads.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from services.common.db import Database

if TYPE_CHECKING:  # imported lazily at run time: the CLI starts without the model-serving code
    from services.model_serving.registry import RegistrySettings

from .admin import AdminError

T = TypeVar("T")


def _registry_settings() -> RegistrySettings:
    from services.model_serving.registry import RegistrySettings

    return RegistrySettings()


def _run(settings: Any, action: Callable[[Any], Awaitable[T]]) -> T:
    """Runs `action(registry)` against the database as the admin role."""
    from services.model_serving.archive import ArchiveError
    from services.model_serving.registry import ModelRegistry, RegistryError

    async def go() -> T:
        db = Database(settings.admin_dsn(), min_size=1, max_size=2)
        await db.open()
        try:
            try:
                await db.ping()
            except Exception as exc:  # noqa: BLE001 - any failure to connect is the operator's to read
                raise AdminError(f"cannot reach the database {settings.db_name} at "
                                 f"{settings.db_host}:{settings.db_port}: {exc}") from None
            return await action(ModelRegistry(db, _registry_settings().store_path))
        finally:
            await db.close()

    try:
        return asyncio.run(go())
    except (RegistryError, ArchiveError) as exc:
        raise AdminError(str(exc)) from None


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(json.dumps(row, default=str, ensure_ascii=False))


def cmd_list(settings: Any, args: argparse.Namespace) -> None:
    _print_rows(_run(settings, lambda reg: reg.list_models()))


def cmd_versions(settings: Any, args: argparse.Namespace) -> None:
    _print_rows(_run(settings, lambda reg: reg.list_versions(args.name)))


def cmd_register(settings: Any, args: argparse.Namespace) -> None:
    from services.model_serving.archive import (
        ArchiveLimits,
        extract_archive,
        remove_tree,
    )

    source = Path(args.path)
    if not source.exists():
        raise AdminError(f"{source} does not exist: give an artifact directory or a .tar.gz/.zip archive")
    rs = _registry_settings()

    async def register(reg):  # type: ignore[no-untyped-def]
        if source.is_dir():
            return await reg.register(args.name, source, created_by=args.by)
        reg.store.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".upload-", dir=reg.store))
        try:
            limits = ArchiveLimits(max_bytes=rs.registry_max_unpacked_bytes, max_files=rs.registry_max_files)
            root = await asyncio.to_thread(extract_archive, source, workdir, limits)
            return await reg.register(args.name, root, created_by=args.by)
        finally:
            await asyncio.to_thread(remove_tree, workdir)

    done = _run(settings, register)
    if done.created:
        print(f"registered {done.name} version {done.version} (manifest sha256 {done.manifest_sha256}) "
              f"in {done.directory}")
    else:
        print(f"{done.name}: this artifact is already registered as version {done.version}; nothing changed")


def cmd_alias(settings: Any, args: argparse.Namespace) -> None:
    change = _run(settings, lambda reg: reg.set_alias(args.name, args.alias, args.version, by=args.by))
    if change.previous is None:
        print(f"{change.name}@{change.alias} -> version {change.version} (new alias; previously unset)")
    elif change.previous == change.version:
        print(f"{change.name}@{change.alias} already points at version {change.version}; previous target "
              f"{change.previous}")
    else:
        print(f"{change.name}@{change.alias} -> version {change.version} (previous target: version "
              f"{change.previous}; roll back with `doctag model alias {change.name} {change.alias} "
              f"{change.previous}`)")


def cmd_purge_log(settings: Any, args: argparse.Namespace) -> None:
    from services.model_serving.inference_log import InferenceLog

    days = args.retention_days if args.retention_days is not None else _registry_settings().inference_log_retention_days
    if days < 0:
        raise AdminError("--retention-days must be >= 0")
    removed = _run(settings, lambda reg: InferenceLog(reg.db, retention_days=days).purge())
    print(f"inference log: removed {removed} rows older than {days} days")


def add_commands(model: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the registry commands to the `doctag model` group."""
    by_default = f"cli:{getpass.getuser()}"
    model.add_parser("list", help="registered models with their aliases").set_defaults(func=cmd_list)
    mv = model.add_parser("versions", help="versions of a model")
    mv.add_argument("name")
    mv.set_defaults(func=cmd_versions)
    mr = model.add_parser("register", help="verify an artifact (directory or .tar.gz/.zip) and register it as "
                                           "the model's next version")
    mr.add_argument("name")
    mr.add_argument("path", metavar="DIR_OR_ARCHIVE")
    mr.add_argument("--by", default=by_default, help="who registers it (recorded)")
    mr.set_defaults(func=cmd_register)
    ma = model.add_parser("alias", help="point an alias (production, candidate, ...) at a version; prints the "
                                        "previous target")
    ma.add_argument("name")
    ma.add_argument("alias")
    ma.add_argument("version", type=int)
    ma.add_argument("--by", default=by_default, help="who moves it (recorded)")
    ma.set_defaults(func=cmd_alias)
    mp = model.add_parser("purge-log", help="delete inference log rows older than the retention period")
    mp.add_argument("--retention-days", type=int, default=None,
                    help="default DOCTAG_INFERENCE_LOG_RETENTION_DAYS (30)")
    mp.set_defaults(func=cmd_purge_log)


def ensure_shipped_model(settings: Any) -> str:
    """`make up`: registers the committed model (DOCTAG_MODEL_DIR) unless it is already a version, and
    points `production` at it when unset; returns a line saying what production serves."""
    from services.model_serving.registry import manifest_name
    from services.model_serving.settings import ModelServingSettings

    model_dir = ModelServingSettings().model_dir
    name = manifest_name(model_dir)
    resolved = _run(settings, lambda reg: reg.ensure_default(name, model_dir, by="make-up"))
    return f"model registry: {resolved.name}@production is version {resolved.version} ({resolved.directory})"


def resolve_directory(settings: Any, ref: str) -> Path:
    """The store directory of a registered version: NAME:VERSION, NAME@ALIAS, or a bare version/alias
    of the shipped model's name."""
    from services.model_serving.registry import manifest_name
    from services.model_serving.resolved import parse_model_ref
    from services.model_serving.settings import ModelServingSettings

    name, selector = parse_model_ref(ref)
    name = name or manifest_name(ModelServingSettings().model_dir)
    resolved = _run(settings, lambda reg: reg.resolve(name, selector))
    return Path(resolved.directory)


def register_directory(settings: Any, directory: Path, by: str = "doctag model train") -> str:
    """Registers a freshly trained artifact under its manifest's name; says which version it became."""
    from services.model_serving.registry import manifest_name

    name = manifest_name(directory)
    done = _run(settings, lambda reg: reg.register(name, directory, created_by=by))
    state = "registered as" if done.created else "already registered as"
    return (f"{name}: {state} version {done.version}; promote it with "
            f"`doctag model alias {name} production {done.version}`")
