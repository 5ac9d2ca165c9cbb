"""`doctag deploy` over a real SSH server to this machine: the gateway role, supervisor mode.

A private sshd (Debian's openssh-server, run as root on a free loopback port with a throw-away
host key and client key) stands in for a VM. The deploy copies the gateway's bundle through it,
runs install.sh into a temporary prefix, writes the host's files, starts supervisord and waits
until the gateway answers /readyz (it pings this session's PostgreSQL database). Then: a second
deploy is "unchanged" and restarts nothing; a configuration change restarts; a new version then
`rollback` returns to the first one, ready again.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from services.cli import bundle
from services.cli.deploy import Deployer, Transport
from services.cli.inventory import parse_inventory
from services.common import pki
from services.common.tls import ReloadingSSLContext, TlsFiles

REPO = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.deployment,
    pytest.mark.skipif(not SSHD.exists() or os.geteuid() != 0,
                       reason="needs root and openssh-server (`apt-get install -y openssh-server`)"),
]
GW_ADDRESS = "127.0.0.2"  # the gateway "host"; the db host is this machine's loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ssh_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n")
    (d / "ssh_config").write_text(
        f"Host *\n  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
        "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    sshd = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield d / "ssh_config", port
    finally:
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=10)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    cache = REPO / "var" / "bundle-cache"
    with open("/tmp/heavy.lock", "a") as lock:
        if not bundle.is_cached("gateway", cache):  # resolving and building wheels: under the shared lock
            fcntl.flock(lock, fcntl.LOCK_EX)
        for version in ("0.1.0+ssh1", "0.1.0+ssh2"):
            bundle.build("gateway", out, cache=cache, version=version)
    return out


def _inventory(root: Path, test_db_name: str, ssh_port: int, **env: str) -> dict:
    return {
        "version": 1, "deployment": "sshtest",
        "defaults": {"install_root": str(root / "opt"), "config_dir": str(root / "etc"),
                     "state_dir": str(root / "state"), "blob_dir": str(root / "blobs"),
                     "service_manager": "supervisor", "service_user": None, "ssh_port": ssh_port,
                     # this machine's PostgreSQL has no TLS and its Redis no ACL user (a db host set up by
                     # `doctag dbhost setup` has both): the inventory's env overrides what deploy renders
                     "env": {"DOCTAG_DB_NAME": test_db_name, "DOCTAG_GATEWAY_REDIS_PREFIX": f"{test_db_name}-gw",
                             "DOCTAG_DB_SSLMODE": "disable", "DOCTAG_GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/0",
                             **env}},
        "hosts": [
            {"name": "db-1", "role": "db", "address": "127.0.0.1"},
            {"name": "model-1", "role": "model", "address": "127.0.0.3"},
            {"name": "web-1", "role": "web", "address": "127.0.0.4"},
            {"name": "gw-1", "role": "gateway", "address": GW_ADDRESS, "ssh_host": "127.0.0.1"},
        ],
    }


def _status_readyz(deployer: Deployer) -> int:
    """The gateway's status listener over mutual TLS, with the operator's platform certificate."""
    d = deployer.state.operator_pki
    cert, key = pki.cert_paths(d, "gateway")
    tls = ReloadingSSLContext(TlsFiles(d / "ca.crt", cert, key), server=False)
    with httpx.Client(verify=tls.context, timeout=5) as client:
        return client.get(f"https://{GW_ADDRESS}:8100/readyz").status_code


def _supervisord_pid(root: Path) -> int:
    return int((root / "state" / "run" / "supervisord.pid").read_text())


def test_deploy_over_ssh_is_idempotent_and_rolls_back(ssh_config: tuple[Path, int], dist: Path, tmp_path: Path,
                                                      test_db_name: str) -> None:
    root = tmp_path / "host"
    config, port = ssh_config
    data = _inventory(root, test_db_name, port)
    deployer = Deployer(parse_inventory(data, "ssh-test.yaml"), transport=Transport(f"ssh -F {config}"),
                        dist=dist, version="0.1.0+ssh1", state_root=tmp_path / "operator", ready_timeout=90,
                        inventory_text=yaml.safe_dump(data), log=False)
    host = deployer.inv.host("gw-1")
    try:
        first = deployer.deploy(host)
        assert first.changed and first.version == "0.1.0+ssh1"
        assert os.readlink(root / "opt" / "current") == "0.1.0+ssh1"
        # only the gateway's certificate and key, the token signing key, its own database password
        etc = root / "etc"
        assert sorted(p.name for p in (etc / "pki").iterdir()) == ["ca.crt", "gateway.crt", "gateway.key"]
        assert sorted(p.name for p in (etc / "secrets" / "db").iterdir()) == ["doctag_gateway"]
        assert (etc / "pki" / "gateway.key").stat().st_mode & 0o777 == 0o640
        assert "ca.key" not in {p.name for p in etc.rglob("*")}
        assert _status_readyz(deployer) == 200
        with pytest.raises(httpx.HTTPError):   # without a platform certificate: nothing
            httpx.get(f"http://{GW_ADDRESS}:8100/readyz", timeout=5)
        pid = _supervisord_pid(root)

        again = deployer.deploy(host)
        assert not again.changed and "nothing restarted" in again.detail
        assert _supervisord_pid(root) == pid

        debug = _inventory(root, test_db_name, port, DOCTAG_LOG_LEVEL="DEBUG")
        changed = Deployer(parse_inventory(debug, "ssh-test.yaml"),
                           transport=deployer.transport, dist=dist, version="0.1.0+ssh2",
                           state_root=tmp_path / "operator", ready_timeout=90, log=False)
        upgraded = changed.deploy(changed.inv.host("gw-1"))
        assert upgraded.changed and upgraded.version == "0.1.0+ssh2"
        assert "DOCTAG_LOG_LEVEL='DEBUG'" in (etc / "gateway.env").read_text()
        assert (os.readlink(root / "opt" / "current"), os.readlink(root / "opt" / "previous")) == (
            "0.1.0+ssh2", "0.1.0+ssh1")
        assert _supervisord_pid(root) != pid

        back = deployer.rollback(host)
        assert back.version == "0.1.0+ssh1" and os.readlink(root / "opt" / "current") == "0.1.0+ssh1"
        assert _status_readyz(deployer) == 200
    finally:
        conf = root / "etc" / "supervisord.conf"
        ctl = root / "opt" / "current" / "venv" / "bin" / "supervisorctl"
        if conf.exists() and ctl.exists():
            subprocess.run([str(ctl), "-c", str(conf), "shutdown"], capture_output=True, timeout=60)
