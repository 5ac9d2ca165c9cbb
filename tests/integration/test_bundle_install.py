"""A real offline bundle (the gateway role: the smallest) installed for real with its install.sh:
checksums refused when tampered with, idempotent reinstall, atomic switch, rollback.

Building takes the shared heavy lock (`flock /tmp/heavy.lock`) when the wheels are not cached yet:
pip resolves them once into var/bundle-cache, later builds reuse them. install.sh runs with
networking irrelevant: pip gets --no-index and no configuration, so anything missing from the
wheelhouse fails the install.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli import bundle

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.deployment]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Two versions of the gateway bundle (the second differs only in its version)."""
    out = tmp_path_factory.mktemp("dist")
    cache = REPO / "var" / "bundle-cache"
    with open("/tmp/heavy.lock", "a") as lock:
        if not bundle.is_cached("gateway", cache):  # resolving and building wheels: under the shared lock
            fcntl.flock(lock, fcntl.LOCK_EX)
        first = bundle.build("gateway", out, cache=cache, version="0.1.0+test1")
        second = bundle.build("gateway", out, cache=cache, version="0.1.0+test2")
        again = bundle.build("gateway", out, cache=cache, version="0.1.0+test2")
    assert again.reused and again.seconds < 5
    yield first.path, second.path


def _unpack(path: Path, into: Path) -> Path:
    return bundle.extract(path, into)


# As root, install.sh runs in a network namespace of its own with no interface but loopback down:
# an install that tried to reach an index would fail, not quietly download.
OFFLINE = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []


def _install(top: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OFFLINE, str(top / "install.sh"), *args], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})


def test_bundle_holds_exactly_the_roles_wheels(bundles: tuple[Path, Path]) -> None:
    with tarfile.open(bundles[0]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    wheels = [n for n in names if n.startswith("wheelhouse/")]
    assert not [w for w in wheels if "torch" in w or "onnx" in w or "transformers" in w]
    assert any(w.startswith("wheelhouse/supervisor-") for w in wheels)
    assert any(w.startswith("wheelhouse/redis-") for w in wheels)  # the gateway extra
    assert not any(w.startswith("wheelhouse/kiwipiepy") for w in wheels)  # web's, not the gateway's
    assert {"install.sh", "SHA256SUMS", "VERSION", "requirements.txt", "systemd/doctag-gateway.service",
            "config/kong.yml.template"} <= set(names)
    own = bundle.read_member(bundles[0], "wheelhouse/doctag-0.1.0-py3-none-any.whl")
    assert b"model_serving/artifacts/" not in own  # only the model role's wheel carries the model


def test_install_idempotence_tamper_and_rollback(bundles: tuple[Path, Path], tmp_path: Path) -> None:
    prefix = tmp_path / "opt doctag"  # a space in the path, as careless prefixes have
    first = _unpack(bundles[0], tmp_path / "b1")

    # a tampered wheel is refused, naming the file; nothing is installed
    victim = next((first / "wheelhouse").glob("pyjwt-*.whl"))
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    result = _install(first, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr and f"wheelhouse/{victim.name}: FAILED" in result.stderr
    assert not (prefix / "current").exists()
    victim.write_bytes(original)
    (first / "wheelhouse" / "extra.whl").write_bytes(b"x")
    result = _install(first, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode != 0 and "not listed in SHA256SUMS: wheelhouse/extra.whl" in result.stderr
    (first / "wheelhouse" / "extra.whl").unlink()

    result = _install(first, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    assert os.readlink(prefix / "current") == "0.1.0+test1"
    venv_python = prefix / "current" / "venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import gateway.app, supervisor, redis, services.cli.main; "
                            "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.stdout.strip() == "True", probe.stderr

    # the same bundle again: nothing changes (not even the venv's files)
    marker = prefix / "0.1.0+test1" / ".installed"
    before = marker.stat().st_mtime_ns
    result = _install(first, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode == 0 and "already installed" in result.stdout and "nothing changed" in result.stdout
    assert marker.stat().st_mtime_ns == before

    second = _unpack(bundles[1], tmp_path / "b2")
    result = _install(second, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    assert (os.readlink(prefix / "current"), os.readlink(prefix / "previous")) == ("0.1.0+test2", "0.1.0+test1")

    # rollback from the installed copy of install.sh, without a bundle or --prefix
    shutil.rmtree(tmp_path / "b2")
    result = subprocess.run([str(prefix / "current" / "install.sh"), "rollback"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert (os.readlink(prefix / "current"), os.readlink(prefix / "previous")) == ("0.1.0+test1", "0.1.0+test2")
    # no temporary links left behind by the atomic switches
    assert sorted(p.name for p in prefix.iterdir()) == ["0.1.0+test1", "0.1.0+test2", "current", "previous"]

    # the first bundle again: already installed, only current moves back to it... it is current: unchanged
    result = _install(first, "--prefix", str(prefix), "--python", sys.executable)
    assert "nothing changed" in result.stdout


def test_rollback_without_previous_is_refused(tmp_path: Path, bundles: tuple[Path, Path]) -> None:
    top = _unpack(bundles[0], tmp_path / "b")
    result = subprocess.run([str(top / "install.sh"), "rollback", "--prefix", str(tmp_path / "p")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "no previous version" in result.stderr
    result = subprocess.run([str(top / "install.sh"), "--prefix", str(tmp_path / "p"), "--python", "/bin/false"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "this bundle's wheels are for Python 3.11" in result.stderr


def test_db_bundle_installs_the_operator_cli_that_migrates(tmp_path: Path, admin_dsn: str) -> None:
    """The db role's bundle (the `ops` extra and the migrations) runs `doctag db upgrade` from its
    own venv, as the db host's set-up does, against a fresh database."""
    import psycopg

    cache = REPO / "var" / "bundle-cache"
    with open("/tmp/heavy.lock", "a") as lock:
        if not bundle.is_cached("db", cache):
            fcntl.flock(lock, fcntl.LOCK_EX)
        built = bundle.build("db", tmp_path / "dist", cache=cache, version="0.1.0+dbtest")
    top = _unpack(built.path, tmp_path / "b")
    prefix = tmp_path / "opt"
    result = _install(top, "--prefix", str(prefix), "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    name = f"doctag_bundle_{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"DOCTAG_DB_NAME": name}
    try:
        result = subprocess.run([str(prefix / "current" / "venv" / "bin" / "doctag"), "db", "upgrade"], env=env,
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"database {name} is at migration head" in result.stdout
    finally:
        with psycopg.connect(admin_dsn.rsplit("dbname=", 1)[0] + "dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
