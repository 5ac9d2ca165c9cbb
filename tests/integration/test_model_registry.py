"""The model registry against the real PostgreSQL: registration with checksum refusal,
immutable versions, aliases with history, resolution, the HTTP API (platform_admin
only, archive uploads), the inference log with its retention purge, and the CLI.

Artifacts are tiny directories built per test (the loader's file names with random
bytes, plus a manifest); each test uses its own model name in the session database.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest

from services.cli.main import main as cli_main
from services.common.auth import TokenVerifier
from services.common.db import Database
from services.common.http import create_app
from services.model_serving.archive import remove_tree
from services.model_serving.inference_log import InferenceLog, input_sha256
from services.model_serving.models.manifest import REQUIRED_FILES, read_verified_manifest, write_manifest
from services.model_serving.registry import (
    ArtifactRefused,
    ModelRegistry,
    RegistryConnection,
    RegistryError,
    RegistryNotFound,
    RegistrySettings,
)
from services.model_serving.registry_api import build_registry_router
from services.model_serving.resolved import UnknownModel
from tests.conftest import DB_HOST, DB_PORT

pytestmark = pytest.mark.integration


def make_artifact(directory: Path, name: str, *, seed: str | None = None, labels: tuple[str, ...] = ("경제", "정치"),
                  extra: dict | None = None) -> Path:
    """A tiny artifact: the files the loader needs (random bytes) and a manifest vouching for them."""
    directory.mkdir(parents=True, exist_ok=True)
    seed = seed or uuid.uuid4().hex
    for i, rel in enumerate(REQUIRED_FILES):
        (directory / rel).write_bytes(hashlib.sha256(f"{seed}-{i}".encode()).digest() * 8)
    (directory / "sub").mkdir(exist_ok=True)
    (directory / "sub" / "vocab.txt").write_text(f"{seed}\n", encoding="utf-8")
    manifest = {"name": name, "version": "1", "labels": list(labels),
                "metrics": {"headlines_macro_f1": 0.9}, "training_data": {"datasets": ["headlines_train.jsonl"]},
                **(extra or {})}
    write_manifest(directory, manifest)
    return directory


def tar_gz(source: Path, arcroot: str = "artifact") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(source, arcname=arcroot)
    return buf.getvalue()


def zip_flat(source: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(source.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(source).as_posix())
    return buf.getvalue()


def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def model_dsn(test_db_name: str) -> str:
    """model-serving's own role: proves the migration's grants are enough."""
    return f"host={DB_HOST} port={DB_PORT} user=doctag_model dbname={test_db_name}"


@pytest.fixture
async def db(model_dsn: str) -> AsyncIterator[Database]:
    database = Database(model_dsn, min_size=1, max_size=3)
    await database.open()
    yield database
    await database.close()


@pytest.fixture
def session_store() -> Path:
    """The session's model store (DOCTAG_MODEL_STORE, set by conftest): every version registered in
    the session database is kept there, so a model-serving started on that database later finds all
    of them (its start-up check marks it not ready otherwise). Tests leave their versions intact."""
    return RegistrySettings().store_path


@pytest.fixture
def registry(db: Database, session_store: Path) -> ModelRegistry:
    return ModelRegistry(db, session_store)


# -- registration ------------------------------------------------------------------------------


async def test_register_copies_verifies_and_locks_the_artifact(registry, tmp_path) -> None:
    name = model_name()
    source = make_artifact(tmp_path / "a", name)
    first = await registry.register(name, source, created_by="alice")
    assert (first.version, first.created) == (1, True)
    assert first.directory == registry.store / name / "1"
    copied = sorted(p.relative_to(first.directory).as_posix() for p in first.directory.rglob("*") if p.is_file())
    assert copied == sorted([*REQUIRED_FILES, "manifest.json", "sub/vocab.txt"])
    assert all(not (p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
               for p in first.directory.rglob("*") if p.is_file())
    assert first.manifest_sha256 == hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest()

    again = await registry.register(name, source, created_by="bob")
    assert (again.version, again.created) == (1, False)  # the same manifest is not a new version
    second = await registry.register(name, make_artifact(tmp_path / "b", name), created_by="bob")
    assert (second.version, second.created) == (2, True)

    versions = await registry.list_versions(name)
    assert [(v["version"], v["created_by"], v["metrics"], v["labels"]) for v in versions] == [
        (1, "alice", {"headlines_macro_f1": 0.9}, ["경제", "정치"]),
        (2, "bob", {"headlines_macro_f1": 0.9}, ["경제", "정치"])]
    assert versions[0]["training_data"] == {"datasets": ["headlines_train.jsonl"]}
    assert [v["evaluations"] for v in versions] == [{}, {}]
    # Each version's latest evaluation per task (the finisher's, on the task's fixed evaluation set).
    for sha, f1 in (("a" * 64, 0.5), ("b" * 64, 0.8)):
        async with registry.db.transaction() as conn:
            await conn.execute("INSERT INTO models.version_evaluations (model_name, version, task, eval_sha256, "
                               "metrics, confusion) VALUES (%s, 1, 'headlines', %s, %s, '{}')",
                               (name, sha, json.dumps({"macro_f1": f1, "per_label": {"경제": {"f1": f1}}})))
    versions = await registry.list_versions(name)
    assert versions[0]["evaluations"] == {"headlines": {"macro_f1": 0.8, "per_label": {"경제": {"f1": 0.8}}}}
    assert versions[1]["evaluations"] == {}
    assert [p.name for p in (registry.store / name).iterdir()] and not list((registry.store / name).glob(".*"))


async def test_a_tampered_file_is_refused_and_nothing_is_registered(registry, tmp_path) -> None:
    name = model_name()
    source = make_artifact(tmp_path / "a", name)
    weights = source / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0x01  # one bit of one byte
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactRefused, match=r"refused: model\.safetensors does not match the manifest"):
        await registry.register(name, source, created_by="alice")
    assert name not in [m["name"] for m in await registry.list_models()]
    assert not (registry.store / name).exists() or list((registry.store / name).iterdir()) == []

    missing = make_artifact(tmp_path / "b", name)
    (missing / "sub" / "vocab.txt").unlink()
    with pytest.raises(ArtifactRefused, match=r"sub/vocab\.txt is listed in the manifest but missing"):
        await registry.register(name, missing, created_by="alice")
    with pytest.raises(ArtifactRefused, match="names model"):
        await registry.register(name, make_artifact(tmp_path / "c", "other-name"), created_by="alice")
    with pytest.raises(RegistryError) as info:
        await registry.register("Bad Name", make_artifact(tmp_path / "d", name), created_by="alice")
    assert info.value.field == "name"


async def test_registered_versions_are_immutable(registry, tmp_path, admin_dsn) -> None:
    name = model_name()
    await registry.register(name, make_artifact(tmp_path / "a", name), created_by="alice")
    with psycopg.connect(admin_dsn) as conn:  # even the owner cannot change or remove a version
        with pytest.raises(psycopg.errors.RestrictViolation, match="immutable"):
            conn.execute("UPDATE models.versions SET metrics = '{}' WHERE model_name = %s", (name,))
        conn.rollback()
        with pytest.raises(psycopg.errors.RestrictViolation, match="immutable"):
            conn.execute("DELETE FROM models.versions WHERE model_name = %s", (name,))
        conn.rollback()
    async with registry.db.transaction() as conn:  # model-serving's role has no UPDATE at all
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("UPDATE models.versions SET created_by = 'x' WHERE model_name = %s", (name,))


# -- aliases and resolution --------------------------------------------------------------------


async def test_alias_promotion_and_rollback_keep_their_history(registry, tmp_path) -> None:
    name = model_name()
    v1 = await registry.register(name, make_artifact(tmp_path / "a", name), created_by="alice")
    v2 = await registry.register(name, make_artifact(tmp_path / "b", name), created_by="alice")

    assert (await registry.set_alias(name, "production", 1, by="alice")).previous is None
    assert (await registry.set_alias(name, "candidate", 2, by="alice")).previous is None
    promoted = await registry.set_alias(name, "production", 2, by="bob")
    assert (promoted.previous, promoted.version) == (1, 2)
    resolved = await registry.resolve(name, "production")
    assert (resolved.name, resolved.version, resolved.directory, resolved.manifest_sha256) == (
        name, "2", v2.directory, v2.manifest_sha256)

    rolled_back = await registry.set_alias(name, "production", 1, by="carol")
    assert (rolled_back.previous, rolled_back.version) == (2, 1)
    assert (await registry.resolve(name, "production")).directory == v1.directory
    assert (await registry.resolve(name, "2")).version == "2"
    history = await registry.alias_history(name, "production")
    assert [(h["previous_version"], h["new_version"], h["changed_by"]) for h in history] == [
        (2, 1, "carol"), (1, 2, "bob"), (None, 1, "alice")]
    models = {m["name"]: m for m in await registry.list_models()}
    assert models[name]["aliases"] == {"candidate": 2, "production": 1}
    assert (models[name]["versions"], models[name]["latest_version"]) == (2, 2)

    with pytest.raises(RegistryNotFound, match="no version 9"):
        await registry.set_alias(name, "production", 9, by="alice")
    with pytest.raises(RegistryNotFound, match="no alias 'staging'"):
        await registry.resolve(name, "staging")
    with pytest.raises(RegistryNotFound, match="no version 7"):
        await registry.resolve(name, "7")
    for bad in ("Prod!", "3", ""):
        with pytest.raises(RegistryError) as info:
            await registry.set_alias(name, bad, 1, by="alice")
        assert info.value.field == "alias"
    assert (await registry.resolve(name, "production")).version == "1"  # nothing moved


async def test_ensure_default_registers_once_and_never_moves_production(registry, tmp_path) -> None:
    name = model_name()
    shipped = make_artifact(tmp_path / "shipped", name)
    first = await registry.ensure_default(name, shipped)
    assert first.version == "1"
    assert (await registry.ensure_default(name, shipped)).version == "1"
    assert len(await registry.list_versions(name)) == 1
    await registry.register(name, make_artifact(tmp_path / "new", name), created_by="alice")
    await registry.set_alias(name, "production", 2, by="alice")
    assert (await registry.ensure_default(name, shipped)).version == "2"  # an operator's choice stays
    assert len(await registry.list_versions(name)) == 2


async def test_model_serving_wiring_resolves_refs(test_db_name, tmp_path, session_store) -> None:
    name = model_name()
    shipped = make_artifact(tmp_path / "shipped", name)
    rs = RegistrySettings(db_name=test_db_name, db_host=DB_HOST, db_port=DB_PORT, model_store=session_store)
    connection = RegistryConnection(shipped, rs)
    await connection.start()
    try:
        assert connection.connected and connection.current() is connection.registry
        resolver = connection.resolve
        second = await connection.registry.register(name, make_artifact(tmp_path / "b", name), created_by="alice")
        await connection.registry.set_alias(name, "candidate", second.version, by="alice")
        assert (await resolver(None)).version == "1"
        assert (await resolver("production")).version == "1"
        assert (await resolver("candidate")).version == "2"
        assert (await resolver(f"{name}:2")).directory == second.directory
        assert (await resolver(f"{name}@candidate")).version == "2"
        with pytest.raises(RegistryNotFound):
            await resolver("other-model:1")
        with pytest.raises(UnknownModel):
            await resolver(f"{name}:")
    finally:
        await connection.close()


# -- HTTP API ----------------------------------------------------------------------------------


@pytest.fixture
def api(registry: ModelRegistry, key_dir: Path):  # type: ignore[no-untyped-def]
    def build(**limits: int) -> httpx.AsyncClient:
        app = create_app("model-serving-test", title="registry test")
        verifier = TokenVerifier(key_dir / "jwt_public.pem", "doctag", "doctag-api")
        app.include_router(build_registry_router(lambda: registry, verifier, RegistrySettings(**limits)))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://model-serving")

    return build


def upload(client: httpx.AsyncClient, name: str, token: str, data: bytes, filename: str = "a.tar.gz"):  # type: ignore[no-untyped-def]
    return client.post(f"/api/v1/models/{name}/versions", headers={"Authorization": f"Bearer {token}"},
                       files={"file": (filename, data, "application/octet-stream")})


async def test_http_api_is_for_platform_admins_only(api, make_token, tmp_path) -> None:
    name = model_name()
    user = make_token(str(uuid.uuid4()), roles=("user", "tenant_admin"))
    archive = tar_gz(make_artifact(tmp_path / "a", name))
    async with api() as client:
        assert (await client.get("/api/v1/models")).status_code == 401
        for response in (await client.get("/api/v1/models", headers={"Authorization": f"Bearer {user}"}),
                         await upload(client, name, user, archive),
                         await client.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1},
                                          headers={"Authorization": f"Bearer {user}"})):
            assert response.status_code == 403, response.text
            assert response.headers["content-type"] == "application/problem+json"
        admin = {"Authorization": f"Bearer {make_token(str(uuid.uuid4()), roles=('platform_admin',))}"}
        assert (await client.get(f"/api/v1/models/{name}/versions", headers=admin)).status_code == 404


async def test_http_upload_versions_and_aliases(api, make_token, tmp_path) -> None:
    name = model_name()
    token = make_token(str(uuid.uuid4()), roles=("platform_admin",), username="root-admin")
    auth = {"Authorization": f"Bearer {token}"}
    first_dir = make_artifact(tmp_path / "a", name)
    async with api() as client:
        created = await upload(client, name, token, tar_gz(first_dir))
        assert created.status_code == 201, created.text
        assert created.json()["version"] == 1 and created.json()["created"] is True
        same = await upload(client, name, token, zip_flat(first_dir), "same.zip")
        assert (same.status_code, same.json()["version"], same.json()["created"]) == (200, 1, False)
        second = await upload(client, name, token, zip_flat(make_artifact(tmp_path / "b", name)), "b.zip")
        assert (second.status_code, second.json()["version"]) == (201, 2)

        versions = (await client.get(f"/api/v1/models/{name}/versions", headers=auth)).json()["versions"]
        assert [(v["version"], v["created_by"]) for v in versions] == [(1, "root-admin"), (2, "root-admin")]

        moved = await client.put(f"/api/v1/models/{name}/aliases/production", json={"version": 2}, headers=auth)
        assert moved.json() == {"name": name, "alias": "production", "version": 2, "previous_version": None}
        back = await client.put(f"/api/v1/models/{name}/aliases/production", json={"version": 1}, headers=auth)
        assert back.json()["previous_version"] == 2
        models = (await client.get("/api/v1/models", headers=auth)).json()["models"]
        assert next(m for m in models if m["name"] == name)["aliases"] == {"production": 1}

        # Malformed input is 422; a well-formed version that does not exist is 404.
        for body, status in (({"version": 0}, 422), ({}, 422), ({"version": "x"}, 422), ({"version": 5}, 404)):
            bad = await client.put(f"/api/v1/models/{name}/aliases/production", json=body, headers=auth)
            assert bad.status_code == status, (body, bad.text)
            assert bad.json()["errors"][0]["field"] == "version"
        bad_alias = await client.put(f"/api/v1/models/{name}/aliases/9", json={"version": 1}, headers=auth)
        assert (bad_alias.status_code, bad_alias.json()["errors"][0]["field"]) == (422, "alias")


def _traversal_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


async def test_http_refuses_bad_archives_naming_the_field(api, make_token, tmp_path, registry) -> None:
    name = model_name()
    token = make_token(str(uuid.uuid4()), roles=("platform_admin",))
    tampered = make_artifact(tmp_path / "t", name)
    (tampered / "tokenizer.json").write_bytes(b"{}")
    cases = [
        (b"\x1f\x8b\x08 this is not really gzip", 422, "not a .tar.gz"),
        (_traversal_tar(), 422, "leaves the archive"),
        (tar_gz(tampered), 422, "tokenizer.json does not match the manifest"),
        (tar_gz(make_artifact(tmp_path / "o", "other-model")), 422, "names model 'other-model'"),
    ]
    async with api() as client:
        for data, status, message in cases:
            response = await upload(client, name, token, data)
            assert response.status_code == status, response.text
            problem = response.json()
            assert response.headers["content-type"] == "application/problem+json"
            assert problem["errors"][0]["field"] in ("file", "name") and message in problem["detail"]
        no_file = await client.post(f"/api/v1/models/{name}/versions", headers={"Authorization": f"Bearer {token}"},
                                    files={"other": ("x.txt", b"x")})
        assert (no_file.status_code, no_file.json()["errors"][0]["field"]) == (422, "file")
    async with api(registry_max_upload_bytes=2000) as client:
        big = await upload(client, name, token, os.urandom(5000))
        assert (big.status_code, big.json()["errors"][0]["field"]) == (413, "file")
    assert name not in [m["name"] for m in await registry.list_models()]
    assert not list(registry.store.glob(".upload-*"))  # temporary files are gone


# -- inference log -----------------------------------------------------------------------------


async def test_inference_log_records_hashes_and_purges_old_rows(db, admin_dsn) -> None:
    log = InferenceLog(db, retention_days=30)
    tenant = str(uuid.uuid4())
    rid = f"req-{uuid.uuid4().hex}"
    texts = ["예산 편성 보고서", "공공기관 인사 발령"]
    log.record(tenant, "doctag-tagger", "3", 12.5, [[("경제", 0.91), ("정치", 0.05)], [("행정", 0.7)]],
               [input_sha256(t) for t in texts], rid)
    log.record("not-a-uuid", "doctag-tagger", "3", 3.0, [[("사회", 0.5)]], [input_sha256("x")], None)
    assert log.pending == 3
    assert await log.flush() == 3 and log.pending == 0
    with psycopg.connect(admin_dsn) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, model_name, model_version, latency_ms, input_sha256, tags, request_id "
            "FROM models.inference_log WHERE request_id = %s ORDER BY id", (rid,)).fetchall()
        assert rows == [
            (tenant, "doctag-tagger", "3", 12.5, hashlib.sha256(texts[0].encode()).hexdigest(),
             [["경제", 0.91], ["정치", 0.05]], rid),
            (tenant, "doctag-tagger", "3", 12.5, hashlib.sha256(texts[1].encode()).hexdigest(), [["행정", 0.7]], rid)]
        anonymous = conn.execute("SELECT tenant_id FROM models.inference_log WHERE input_sha256 = %s",
                                 (input_sha256("x"),)).fetchone()
        assert anonymous == (None,)
        columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                              "WHERE table_schema = 'models' AND table_name = 'inference_log'")}
        assert not columns & {"text", "input_text", "input_chars"}

        old_rid = f"old-{uuid.uuid4().hex}"
        conn.execute("INSERT INTO models.inference_log (at, model_name, model_version, latency_ms, input_sha256, tags, "
                     "request_id) SELECT now() - make_interval(days => d), 'm', '1', 1, repeat('a', 64), '[]', %s "
                     "FROM unnest(ARRAY[31, 45, 29]) AS d", (old_rid,))
        conn.commit()
    assert await log.purge() >= 2
    with psycopg.connect(admin_dsn) as conn:
        kept = conn.execute("SELECT count(*) FROM models.inference_log WHERE request_id = %s", (old_rid,)).fetchone()
        assert kept == (1,)  # the 29-day-old row stays
        assert conn.execute("SELECT count(*) FROM models.inference_log WHERE request_id = %s",
                            (rid,)).fetchone() == (2,)


async def test_inference_log_is_bounded_while_the_database_is_down(model_dsn) -> None:
    down = Database(model_dsn)  # never opened: every connection attempt fails at once, like an outage
    await down.open()
    await down.close()
    log = InferenceLog(down, max_buffer=3, batch_size=2)
    for i in range(5):
        log.record(None, "m", "1", 1.0, [[("a", 1.0)]], [input_sha256(str(i))], None)
    assert (log.pending, log.dropped) == (3, 2)
    with pytest.raises(psycopg.OperationalError):
        await log.flush()
    assert log.pending == 3  # kept for the next attempt


# -- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, test_db_name: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DOCTAG_DB_NAME", test_db_name)
    return lambda *argv: cli_main(list(argv))


def test_cli_register_list_alias_and_purge(cli, capsys, tmp_path, session_store) -> None:
    name = model_name()
    assert cli("model", "register", name, str(make_artifact(tmp_path / "a", name))) == 0
    assert f"registered {name} version 1" in capsys.readouterr().out
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(tar_gz(make_artifact(tmp_path / "b", name)))
    assert cli("model", "register", name, str(archive), "--by", "ops") == 0
    assert f"registered {name} version 2" in capsys.readouterr().out
    assert (session_store / name / "2" / "manifest.json").is_file()

    tampered = make_artifact(tmp_path / "c", name)
    (tampered / "config.json").write_text("{}")
    assert cli("model", "register", name, str(tampered)) == 1
    assert "config.json does not match the manifest" in capsys.readouterr().err

    assert cli("model", "alias", name, "production", "2") == 0
    assert "previously unset" in capsys.readouterr().out
    assert cli("model", "alias", name, "production", "1") == 0
    assert "previous target: version 2" in capsys.readouterr().out
    assert cli("model", "alias", name, "production", "7") == 1
    assert "no version 7" in capsys.readouterr().err

    assert cli("model", "list") == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert next(m for m in listed if m["name"] == name)["aliases"] == {"production": 1}
    assert cli("model", "versions", name) == 0
    versions = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(v["version"], v["aliases"]) for v in versions] == [(1, ["production"]), (2, [])]
    assert versions[1]["created_by"] == "ops"

    assert cli("model", "purge-log") == 0
    assert "older than 30 days" in capsys.readouterr().out


def test_make_up_registers_the_shipped_model_once(cli, monkeypatch, tmp_path, session_store) -> None:
    from services.cli.main import OpsSettings
    from services.cli.model_registry_cmds import ensure_shipped_model

    name = model_name()
    monkeypatch.setenv("DOCTAG_MODEL_DIR", str(make_artifact(tmp_path / "shipped", name)))
    line = ensure_shipped_model(OpsSettings())
    assert line.startswith(f"model registry: {name}@production is version 1 (")
    assert ensure_shipped_model(OpsSettings()) == line  # the next `make up` changes nothing
    assert (session_store / name / "1" / "manifest.json").is_file()


# -- registry and store kept in step ------------------------------------------------------------


async def test_registering_again_restores_files_missing_from_the_store(registry, tmp_path) -> None:
    """The row exists but the store lost its copy: the same artifact registered again puts it back."""
    name = model_name()
    source = make_artifact(tmp_path / "a", name)
    first = await registry.register(name, source, created_by="alice")
    remove_tree(first.directory)
    again = await registry.register(name, source, created_by="bob")
    assert (again.version, again.created, again.directory) == (1, False, first.directory)
    manifest, sha = read_verified_manifest(again.directory)
    assert sha == first.manifest_sha256 and manifest["name"] == name
    assert not list((registry.store / name).glob(".*")), "no staging folder is left behind"


async def test_registering_again_replaces_a_damaged_store_copy(registry, tmp_path) -> None:
    name = model_name()
    source = make_artifact(tmp_path / "a", name)
    first = await registry.register(name, source, created_by="alice")
    weights = first.directory / "model.safetensors"
    first.directory.chmod(0o755)
    weights.unlink()
    weights.write_bytes(b"half a file")
    (first.directory / "sub" / "vocab.txt").chmod(0o644)
    (first.directory / "sub" / "vocab.txt").unlink()
    again = await registry.register(name, source, created_by="bob")
    assert (again.version, again.created) == (1, False)
    assert read_verified_manifest(again.directory)[1] == first.manifest_sha256
    assert len(await registry.list_versions(name)) == 1


async def test_store_check_names_each_unusable_version_and_its_path(registry, tmp_path, caplog) -> None:
    name = model_name()
    sources = {v: make_artifact(tmp_path / f"v{v}", name) for v in (1, 2, 3)}
    dirs = {v: (await registry.register(name, sources[v], created_by="alice")).directory for v in (1, 2, 3)}
    await registry.set_alias(name, "production", 1, by="alice")
    dirs[1].chmod(0o755)
    (dirs[1] / "config.json").chmod(0o644)
    (dirs[1] / "config.json").write_bytes(b"{}")   # an aliased version is verified file by file
    remove_tree(dirs[2])

    with caplog.at_level("ERROR", logger="services.model_serving.registry"):
        everything = await registry.check_store()   # other tests' models (other stores) are in this database
    problems = {key: why.message for key, why in everything.items() if key[0] == name}
    assert set(problems) == {(name, "1"), (name, "2")}, problems
    assert everything[(name, "1")].aliased and not everything[(name, "2")].aliased
    assert problems[(name, "1")].startswith(f"model {name} version 1 in {dirs[1]}: config.json does not match")
    assert problems[(name, "2")] == f"model {name} version 2 in {dirs[2]}: the directory is missing"
    logged = {(r.model, r.version, r.path) for r in caplog.records
              if r.msg.startswith("registered model version") and r.model == name}
    assert logged == {(name, "1", str(dirs[1])), (name, "2", str(dirs[2]))}

    await registry.register(name, sources[2], created_by="ops")   # restores version 2
    assert [key for key in registry.store_problems if key[0] == name] == [(name, "1")]
    # Version 1 restored by another process (another replica, `doctag model register`): the
    # recorded problem is checked again and dropped, without a restart.
    other = ModelRegistry(registry.db, registry.store)
    await other.register(name, sources[1], created_by="ops")
    assert not [p for p in await registry.unresolved_store_problems() if p.directory == dirs[1]]
    assert not [key for key in await registry.check_store() if key[0] == name]


async def test_rollback_is_one_call_back_to_the_previous_production(api, registry, make_token, tmp_path) -> None:
    name = model_name()
    await registry.register(name, make_artifact(tmp_path / "a", name), created_by="alice")
    await registry.register(name, make_artifact(tmp_path / "b", name), created_by="alice")
    await registry.set_alias(name, "production", 1, by="alice")
    await registry.set_alias(name, "production", 2, by="promotion-policy")
    token = make_token(str(uuid.uuid4()), roles=("platform_admin",), username="ops")
    async with api() as client:
        back = await client.post(f"/api/v1/models/{name}/aliases/production/rollback",
                                 headers={"Authorization": f"Bearer {token}"})
        assert back.status_code == 200, back.text
        assert (back.json()["version"], back.json()["previous_version"]) == (1, 2)
        assert (await registry.resolve(name, "production")).version == "1"
        none = await client.post(f"/api/v1/models/{name}/aliases/staging/rollback",
                                 headers={"Authorization": f"Bearer {token}"})
        assert none.status_code == 404 and none.json()["errors"][0]["field"] == "alias"
    history = await registry.alias_history(name, "production")
    assert next((h["previous_version"], h["new_version"], h["changed_by"]) for h in history) == (2, 1, "ops")
