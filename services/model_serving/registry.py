"""The model registry: models, immutable versions in the model store, and movable aliases.

A version is registered only after its files were copied into the store and every
one of them matched the manifest's SHA-256 there; the copy is made read-only and
renamed into place (`<store>/<name>/<version>`) inside the transaction that writes
the row, so a registered version always has its complete files. Aliases
(`production`, `candidate`, ...) point at versions; moving one records the previous
target in `models.alias_history`, which is how a promotion is rolled back.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from pydantic import Field

from services.common.db import Database, DictConnection
from services.common.settings import CommonSettings

from .archive import remove_tree
from .models.manifest import MANIFEST_NAME, ModelIntegrityError, read_verified_manifest, sha256_file
from .resolved import (
    DEFAULT_ALIAS,
    RegistryUnavailable,
    ResolvedModel,
    Resolver,
    StaticResolver,
    UnknownModel,
    parse_model_ref,
)

__all__ = ["AliasChange", "ArtifactRefused", "ModelRegistry", "Registered", "RegistryConnection", "RegistryError",
           "RegistryNotFound", "RegistrySettings", "RegistryUnavailable", "ResolvedModel", "Resolver", "StoreProblem",
           "manifest_name", "store_problem"]

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
PRODUCTION = DEFAULT_ALIAS


class RegistrySettings(CommonSettings):
    """The registry's part of model-serving's configuration (DOCTAG_* variables)."""

    service_name: str = "model-serving"
    db_user: str = "doctag_model"
    # Off: model-serving serves DOCTAG_MODEL_DIR without a database.
    model_registry: bool = True
    # Where registered versions live; default <state_dir>/models.
    model_store: Path | None = None
    registry_max_upload_bytes: int = 1024**3
    registry_max_unpacked_bytes: int = 2 * 1024**3
    registry_max_files: int = 1000
    inference_log_retention_days: int = 30
    inference_log_flush_s: float = 1.0
    inference_log_batch: int = 5000
    inference_log_buffer: int = 100_000
    inference_log_purge_interval_s: float = 3600.0
    # Longest wait between two attempts to reach the database when it was down at start.
    registry_retry_max_s: float = Field(30.0, gt=0)

    @property
    def store_path(self) -> Path:
        return self.model_store or self.state_dir / "models"


class RegistryError(Exception):
    """A clear, user-facing registry error; `field` names the input at fault."""

    status = 422

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RegistryNotFound(RegistryError, UnknownModel):
    """No such model, version or alias (the runner answers "not found" for it, not "not ready")."""

    status = 404


class ArtifactRefused(RegistryError):
    """The artifact's files do not match its manifest (or it has none): the version is refused."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: int
    manifest_sha256: str
    directory: Path
    created: bool   # False: the same manifest was registered before as `version`


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    previous: int | None
    version: int


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise RegistryError("a model name is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a "
                            "letter or digit", field="name")
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias or ""):
        raise RegistryError("an alias is 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter",
                            field="alias")
    return alias


class ModelRegistry:
    def __init__(self, db: Database, store: Path) -> None:
        self.db = db
        self.store = Path(store)
        # (name, version) -> why its store copy cannot be served; found by check_store, cleared by register.
        self.store_problems: dict[tuple[str, str], StoreCopyProblem] = {}

    # -- registration ----------------------------------------------------------------------
    async def register(self, name: str, source_dir: Path, created_by: str) -> Registered:
        """Copies and verifies the artifact in `source_dir`, then registers it as the next version.

        The same manifest registered before is not registered again (created=False), but its
        files are checked in the store and put back from `source_dir` when missing or damaged.
        Raises ArtifactRefused, naming the file, when any file fails its checksum.
        """
        check_name(name)
        source = Path(source_dir)
        manifest, sha = await asyncio.to_thread(_verify, source)
        if manifest.get("name") != name:
            raise ArtifactRefused(f"the artifact's manifest names model {manifest.get('name')!r}, not {name!r}",
                                  field="name")
        existing = await self._version_by_sha(name, sha)
        if existing is not None:
            return await self._restore_files(name, existing, sha, source)
        staging = await asyncio.to_thread(self._stage, source, name, sha)
        target: Path | None = None
        try:
            async with self.db.transaction() as conn:
                await conn.execute("INSERT INTO models.models (name, description) VALUES (%s, %s) "
                                   "ON CONFLICT (name) DO NOTHING", (name, str(manifest.get("description", ""))))
                await conn.execute("SELECT 1 FROM models.models WHERE name = %s FOR UPDATE", (name,))
                existing = await _scalar(conn, "SELECT version FROM models.versions WHERE model_name = %s "
                                         "AND manifest_sha256 = %s ORDER BY version LIMIT 1", (name, sha))
                if existing is None:
                    version = await _scalar(conn, "SELECT coalesce(max(version), 0) + 1 FROM models.versions "
                                            "WHERE model_name = %s", (name,))
                    target = self._dir(name, version)
                    await asyncio.to_thread(_place, staging, target)
                    await conn.execute(
                        "INSERT INTO models.versions (model_name, version, artifact_path, manifest, "
                        "manifest_sha256, metrics, training_data, created_by) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        (name, version, f"{name}/{version}", Jsonb(manifest), sha,
                         Jsonb(_as_object(manifest.get("metrics"))),
                         Jsonb(_as_object(manifest.get("training_data"))), created_by))
        except BaseException:
            if target is not None:
                await asyncio.to_thread(remove_tree, target)
            raise
        finally:
            await asyncio.to_thread(remove_tree, staging)
        if existing is not None:   # registered meanwhile by someone else
            return await self._restore_files(name, existing, sha, source)
        log.info("model version registered", extra={"model": name, "version": version, "manifest_sha256": sha,
                                                    "created_by": created_by})
        self.store_problems.pop((name, str(version)), None)
        assert target is not None  # set with `version` in the transaction above
        return Registered(name, version, sha, target, True)

    async def _restore_files(self, name: str, version: int, sha: str, source: Path) -> Registered:
        """`version` (manifest `sha`) is registered: checks its store copy and, when that is missing or
        damaged, puts back the files of `source` (which has the same manifest, verified by the caller).

        Raises RegistryError, naming the version and the path, when the store copy stays unusable.
        """
        target = self._dir(name, version)
        problem = await asyncio.to_thread(store_problem, target, sha, full=True)
        if problem is not None:
            log.warning("registered model version has no usable files in the store; putting them back",
                        extra={"model": name, "version": version, "path": str(target), "error": problem})
            staging = await asyncio.to_thread(self._stage, source, name, sha)   # copies and verifies against `sha`
            try:
                async with self.db.transaction() as conn:   # one repair at a time, across processes
                    await conn.execute("SELECT 1 FROM models.models WHERE name = %s FOR UPDATE", (name,))
                    if await asyncio.to_thread(store_problem, target, sha, full=True) is not None:
                        await asyncio.to_thread(_place, staging, target)
            finally:
                await asyncio.to_thread(remove_tree, staging)
            problem = await asyncio.to_thread(store_problem, target, sha, full=True)
            if problem is not None:
                raise RegistryError(f"model {name} version {version}: its files could not be restored in "
                                    f"{target}: {problem}", field="artifact")
            log.info("model version files restored in the store",
                     extra={"model": name, "version": version, "path": str(target)})
        self.store_problems.pop((name, str(version)), None)
        return Registered(name, version, sha, target, False)

    def _dir(self, name: str, version: int) -> Path:
        return self.store / name / str(version)

    def _stage(self, source: Path, name: str, sha: str) -> Path:
        """Copies the manifest and the files it lists into a hidden folder of the store, verifies, locks."""
        staging = self.store / name / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            manifest, _ = read_verified_manifest(source)
            for rel in [MANIFEST_NAME, *manifest["files"]]:
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, dst)
            _, copied_sha = _verify(staging)
            if copied_sha != sha:
                raise ArtifactRefused("the artifact changed while it was being copied; register it again",
                                      field="artifact")
            for p in sorted(staging.rglob("*"), reverse=True):
                p.chmod(0o555 if p.is_dir() else 0o444)
            staging.chmod(0o555)
        except BaseException:
            remove_tree(staging)
            raise
        return staging

    async def _version_by_sha(self, name: str, sha: str) -> int | None:
        async with self.db.transaction() as conn:
            version = await _scalar(conn, "SELECT version FROM models.versions WHERE model_name = %s "
                                    "AND manifest_sha256 = %s ORDER BY version LIMIT 1", (name, sha))
        return None if version is None else int(version)

    async def ensure_default(self, name: str, source_dir: Path, by: str = "system") -> ResolvedModel:
        """Registers the shipped artifact unless already there; points `production` at it when unset."""
        registered = await self.register(name, source_dir, created_by=by)
        async with self.db.transaction() as conn:
            await conn.execute("SELECT 1 FROM models.models WHERE name = %s FOR UPDATE", (name,))
            current = await _scalar(conn, "SELECT version FROM models.aliases WHERE model_name = %s AND alias = %s",
                                    (name, PRODUCTION))
            if current is None:
                await self._move_alias(conn, name, PRODUCTION, registered.version, None, by)
                log.info("production alias set", extra={"model": name, "version": registered.version})
        return await self.resolve(name, PRODUCTION)

    # -- aliases ---------------------------------------------------------------------------
    async def set_alias(self, name: str, alias: str, version: int, by: str) -> AliasChange:
        """Points `alias` at `version`; returns the previous target (None when the alias is new)."""
        check_name(name)
        check_alias(alias)
        async with self.db.transaction() as conn:
            await conn.execute("SELECT 1 FROM models.models WHERE name = %s FOR UPDATE", (name,))
            exists = await _scalar(conn, "SELECT version FROM models.versions WHERE model_name = %s AND version = %s",
                                   (name, version))
            if exists is None:
                raise RegistryNotFound(f"model {name} has no version {version}", field="version")
            previous = await _scalar(conn, "SELECT version FROM models.aliases WHERE model_name = %s AND alias = %s",
                                     (name, alias))
            if previous != version:
                await self._move_alias(conn, name, alias, version, previous, by)
        log.info("alias moved", extra={"model": name, "alias": alias, "previous": previous, "version": version,
                                       "by": by})
        return AliasChange(name, alias, previous, version)

    @staticmethod
    async def _move_alias(conn: DictConnection, name: str, alias: str, version: int, previous: int | None,
                          by: str) -> None:
        await conn.execute(
            "INSERT INTO models.aliases (model_name, alias, version, updated_by) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (model_name, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now(), "
            "updated_by = EXCLUDED.updated_by", (name, alias, version, by))
        await conn.execute(
            "INSERT INTO models.alias_history (model_name, alias, previous_version, new_version, changed_by) "
            "VALUES (%s, %s, %s, %s, %s)", (name, alias, previous, version, by))

    async def rollback(self, name: str, alias: str, by: str) -> AliasChange:
        """Points `alias` back at the version it pointed at before its last move (one call)."""
        check_name(name)
        check_alias(alias)
        async with self.db.transaction() as conn:
            await conn.execute("SELECT 1 FROM models.models WHERE name = %s FOR UPDATE", (name,))
            previous = await _scalar(conn, "SELECT previous_version FROM models.alias_history WHERE model_name = %s "
                                     "AND alias = %s ORDER BY id DESC LIMIT 1", (name, alias))
            current = await _scalar(conn, "SELECT version FROM models.aliases WHERE model_name = %s AND alias = %s",
                                    (name, alias))
            if previous is None or current is None:
                raise RegistryNotFound(f"alias {alias!r} of model {name} has no earlier version to go back to",
                                       field="alias")
            await self._move_alias(conn, name, alias, previous, current, by)
        log.info("alias rolled back", extra={"model": name, "alias": alias, "from": current, "to": previous, "by": by})
        return AliasChange(name, alias, current, previous)

    async def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        """Moves of `name`'s aliases, newest first."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT alias, previous_version, new_version, changed_at, changed_by FROM models.alias_history "
                "WHERE model_name = %s AND (%s::text IS NULL OR alias = %s) ORDER BY id DESC", (name, alias, alias))
            return list(await cur.fetchall())

    async def check_store(self) -> dict[tuple[str, str], StoreCopyProblem]:
        """Checks the store copy of every registered version; logs an error for each unusable one.

        A version an alias points at (what is served without naming a number) is verified
        fully, every file against its checksum; the others by their manifest alone, so that
        start-up does not read every version ever registered. The rest of a named version's
        files is verified when it is loaded. Returns (and keeps in `store_problems`) the problems.
        """
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT v.model_name, v.version, v.artifact_path, v.manifest_sha256, "
                "EXISTS (SELECT 1 FROM models.aliases a WHERE a.model_name = v.model_name "
                "        AND a.version = v.version) AS aliased "
                "FROM models.versions v ORDER BY v.model_name, v.version")
            rows = list(await cur.fetchall())
        problems: dict[tuple[str, str], StoreCopyProblem] = {}
        for row in rows:
            name, version, directory = row["model_name"], str(row["version"]), self.store / row["artifact_path"]
            problem = await asyncio.to_thread(store_problem, directory, row["manifest_sha256"], full=row["aliased"])
            if problem is not None:
                problems[(name, version)] = StoreCopyProblem(
                    f"model {name} version {version} in {directory}: {problem}", directory,
                    row["manifest_sha256"], row["aliased"])
                log.error("registered model version is missing or damaged in the store",
                          extra={"model": name, "version": version, "path": str(directory), "error": problem})
        self.store_problems = problems
        return problems

    async def unresolved_store_problems(self) -> list[StoreCopyProblem]:
        """The recorded problems that still hold: each is checked again (only these versions), so a
        copy restored by another process (`doctag model register`, another replica) is noticed."""
        for key, problem in list(self.store_problems.items()):
            if await asyncio.to_thread(store_problem, problem.directory, problem.manifest_sha256,
                                       full=problem.aliased) is None:
                self.store_problems.pop(key, None)
        return list(self.store_problems.values())

    async def close(self) -> None:
        await self.db.close()

    # -- reading ---------------------------------------------------------------------------
    async def resolve(self, name: str, ref: str) -> ResolvedModel:
        """The artifact of `name` at `ref`: a version number or an alias."""
        ref = str(ref).strip()
        async with self.db.transaction() as conn:
            if ref.isdigit():
                cur = await conn.execute(
                    "SELECT version, artifact_path, manifest_sha256 FROM models.versions "
                    "WHERE model_name = %s AND version = %s", (name, int(ref)))
            else:
                cur = await conn.execute(
                    "SELECT v.version, v.artifact_path, v.manifest_sha256 FROM models.aliases a "
                    "JOIN models.versions v ON v.model_name = a.model_name AND v.version = a.version "
                    "WHERE a.model_name = %s AND a.alias = %s", (name, ref))
            row = await cur.fetchone()
        if row is None:
            what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
            raise RegistryNotFound(f"model {name} has no {what}", field="model")
        return ResolvedModel(name=name, version=str(row["version"]), directory=self.store / row["artifact_path"],
                             manifest_sha256=row["manifest_sha256"].strip())

    async def list_models(self) -> list[dict[str, Any]]:
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT m.name, m.description, m.created_at, "
                "(SELECT count(*) FROM models.versions v WHERE v.model_name = m.name) AS versions, "
                "(SELECT max(version) FROM models.versions v WHERE v.model_name = m.name) AS latest_version, "
                "coalesce((SELECT jsonb_object_agg(a.alias, a.version ORDER BY a.alias) FROM models.aliases a "
                "          WHERE a.model_name = m.name), '{}'::jsonb) AS aliases "
                "FROM models.models m ORDER BY m.name")
            return list(await cur.fetchall())

    async def list_versions(self, name: str) -> list[dict[str, Any]]:
        async with self.db.transaction() as conn:
            if await _scalar(conn, "SELECT 1 FROM models.models WHERE name = %s", (name,)) is None:
                raise RegistryNotFound(f"no model {name!r}", field="name")
            cur = await conn.execute(
                "SELECT v.version, v.manifest_sha256, v.artifact_path, v.metrics, v.training_data, "
                "v.manifest->'labels' AS labels, v.manifest->>'version' AS manifest_version, "
                "v.created_at, v.created_by, "
                "coalesce((SELECT array_agg(a.alias ORDER BY a.alias) FROM models.aliases a "
                "          WHERE a.model_name = v.model_name AND a.version = v.version), '{}') AS aliases, "
                # task → metrics (per label too) on the task's evaluation set, the latest one measured
                "coalesce((SELECT jsonb_object_agg(e.task, e.metrics) FROM (SELECT DISTINCT ON (task) task, metrics "
                "          FROM models.version_evaluations WHERE model_name = v.model_name AND version = v.version "
                "          ORDER BY task, evaluated_at DESC) e), '{}'::jsonb) AS evaluations "
                "FROM models.versions v WHERE v.model_name = %s ORDER BY v.version", (name,))
            rows = list(await cur.fetchall())
        for row in rows:
            row["manifest_sha256"] = row["manifest_sha256"].strip()
        return rows


def _verify(directory: Path) -> tuple[dict[str, Any], str]:
    try:
        return read_verified_manifest(directory)
    except ModelIntegrityError as exc:
        raise ArtifactRefused(f"the version is refused: {exc}", field="artifact") from None


@dataclass(frozen=True)
class StoreCopyProblem:
    """A registered version whose store copy cannot be served, and what is needed to check it again."""

    message: str
    directory: Path
    manifest_sha256: str
    aliased: bool   # an alias points at it: served without naming a number


def store_problem(directory: Path, manifest_sha256: str, *, full: bool) -> str | None:
    """Why the store copy in `directory` is not the registered artifact (None when it is).

    `full` checks every file against the manifest; otherwise only the manifest itself.
    """
    manifest = directory / MANIFEST_NAME
    if not directory.is_dir():
        return "the directory is missing"
    if not manifest.is_file():
        return f"{MANIFEST_NAME} is missing"
    if full:
        try:
            _, actual = read_verified_manifest(directory)
        except ModelIntegrityError as exc:
            return str(exc)
    else:
        actual = sha256_file(manifest)
    expected = manifest_sha256.strip()
    if actual != expected:
        return f"{MANIFEST_NAME} has sha256 {actual}, registered {expected}"
    return None


def _place(staging: Path, target: Path) -> None:
    """Renames the staged copy into place; a leftover of a registration that never committed is replaced."""
    if target.exists():
        remove_tree(target)
    staging.parent.chmod(0o755)
    staging.chmod(0o755)  # a directory moves only while writable on some filesystems; locked again below
    staging.rename(target)
    target.chmod(0o555)


def manifest_name(directory: Path) -> str:
    try:
        return check_name(str(json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))["name"]))
    except (OSError, ValueError, KeyError, TypeError, RegistryError) as exc:
        raise RegistryError(f"{directory / MANIFEST_NAME} does not name a model: {exc}") from None


def _as_object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else ({} if value is None else {"value": value})


async def _scalar(conn: DictConnection, query: str, params: tuple[Any, ...]) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


# -- model-serving wiring --------------------------------------------------------------------

RETRY_FIRST_S = 0.5


class StoreProblem(Exception):
    """A registered version's files are missing or damaged in the model store."""


class RegistryConnection:
    """The registry as model-serving uses it: connected at start or later, in the background.

    `start` tries once and, when PostgreSQL does not answer, keeps trying with back-off
    (0.5 s doubling to `registry_retry_max_s`), logging a warning at each failure. Until
    then `resolve` serves the shipped artifact (`model_dir`) as the default model and
    refuses named versions with RegistryUnavailable, `current` raises it (the registry API
    answers 503), the inference log only buffers (bounded), and `ready_check` fails with
    the reason. Once connected, the shipped artifact is registered under the name in its
    manifest (its store files restored when needed) with `production` pointing at it
    when unset, every version's store copy is checked (`ModelRegistry.check_store`), the
    inference log starts writing, and `on_connected` runs.
    """

    def __init__(self, model_dir: Path, settings: RegistrySettings | None = None) -> None:
        from .inference_log import InferenceLog

        rs = self.settings = settings or RegistrySettings()
        self.model_dir = Path(model_dir)
        self.db = Database(rs.dsn(), min_size=1, max_size=max(2, rs.db_pool_max // 2))
        self.registry = ModelRegistry(self.db, rs.store_path)
        self.inference_log = InferenceLog(self.db, retention_days=rs.inference_log_retention_days,
                                          flush_interval_s=rs.inference_log_flush_s,
                                          batch_size=rs.inference_log_batch, max_buffer=rs.inference_log_buffer,
                                          purge_interval_s=rs.inference_log_purge_interval_s)
        self.connected = False
        self.error = "not connected yet"
        self.default_name: str | None = None
        self.on_connected: Callable[[], None] | None = None
        self._fallback = StaticResolver(self.model_dir)
        self._pool_opened = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """One attempt now (a healthy start serves the registry's `production` from the first load),
        then, when it failed, attempts in the background until one succeeds."""
        if not await self._attempt():
            self._task = asyncio.create_task(self._retry(), name="registry-connect")

    async def _retry(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            if await self._attempt():
                return
            delay = min(delay * 2, self.settings.registry_retry_max_s)

    async def _attempt(self) -> bool:
        try:
            await self._connect()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; tried again
            self.error = f"{exc.__class__.__name__}: {exc}".strip()[:500]
            log.warning("model registry not connected; serving DOCTAG_MODEL_DIR as the default model and retrying",
                        extra={"error": self.error, "db": f"{self.settings.db_host}:{self.settings.db_port}"})
            return False
        self.connected = True
        self.error = ""
        self.inference_log.start()
        log.info("model registry connected", extra={"model": self.default_name, "store": str(self.registry.store)})
        if self.on_connected is not None:
            self.on_connected()
        return True

    async def _connect(self) -> None:
        self.default_name = manifest_name(self.model_dir)
        # A single connection first: the pool is opened only once the server answers, since a
        # pool opened against a dead server retries on its own schedule and cannot be reopened.
        probe = await psycopg.AsyncConnection.connect(self.settings.dsn(), connect_timeout=3)
        await probe.close()
        if not self._pool_opened:
            await self.db.open()
            self._pool_opened = True
        await self.db.ping()
        try:
            await self.registry.ensure_default(self.default_name, self.model_dir)
        except RegistryError:  # a version registered before may still be served; check_store reports the store
            log.exception("the shipped model could not be registered", extra={"model_dir": str(self.model_dir)})
        await self.registry.check_store()

    def current(self) -> ModelRegistry:
        """The registry, or RegistryUnavailable while its database has not been reached (for the
        platform_admin API: the message names the connection error)."""
        if not self.connected:
            raise RegistryUnavailable(f"the model registry is not connected yet ({self.error}); retrying")
        return self.registry

    async def resolve(self, ref: str | None) -> ResolvedModel:
        """The runner's resolver: "name:3", "name@alias", "3", "candidate" or None (= `production` of
        the shipped model's name). Before the connection only the default model is known."""
        if not self.connected:
            if (ref or "").strip():
                raise RegistryUnavailable("the model registry is not connected yet; only the default model "
                                          "is served")
            return await self._fallback(None)
        name, selector = parse_model_ref(ref)
        return await self.registry.resolve(name or self.default_name or "", selector)

    async def ready_check(self) -> None:
        """Readiness: fails while the database is unreachable or the store copy of a version an
        alias points at is unusable (other unusable versions are logged; they fail when named)."""
        if not self.connected:
            raise RegistryUnavailable(f"not connected to the registry's database ({self.error}); retrying")
        await self.db.ping()
        problems = [p.message for p in await self.registry.unresolved_store_problems() if p.aliased]
        if problems:
            more = f" (and {len(problems) - 1} more, see the log)" if len(problems) > 1 else ""
            raise StoreProblem(problems[0] + more)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.inference_log.close()
        await self.db.close()
