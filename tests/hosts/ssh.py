"""An SSH server in each host's namespace, as each VM has one, for `doctag deploy` to log in to.

Debian's openssh-server (`make test-hosts` installs it when missing), one sshd per namespace
listening on the host's address only, with host keys and an authorized client key made for this
run (nothing of the machine's own SSH set-up is used or changed). The operator's side is an
ssh_config naming the run's key and a known_hosts file holding exactly the hosts' keys, so
`doctag deploy --ssh "ssh -F <config>"` logs in with strict host key checking.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.hosts.netns import Host, in_ns

SSHD = Path("/usr/sbin/sshd")


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def available() -> bool:
    return SSHD.exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


class SshHosts:
    def __init__(self, root: Path, hosts: Sequence[Host]) -> None:
        self.root = root
        self.hosts = tuple(hosts)

    @property
    def client_config(self) -> Path:
        return self.root / "ssh_config"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        key = self.root / "operator_ed25519"
        _keygen(key, "doctag-test-operator")
        (self.root / "authorized_keys").write_text((self.root / "operator_ed25519.pub").read_text())
        known = []
        for host in self.hosts:
            hdir = self.root / host.name
            hdir.mkdir(mode=0o700)
            _keygen(hdir / "ssh_host_ed25519_key", host.name)
            known.append(f"{host.address} {(hdir / 'ssh_host_ed25519_key.pub').read_text().split(' ')[0]} "
                         f"{(hdir / 'ssh_host_ed25519_key.pub').read_text().split(' ')[1]}")
            (hdir / "sshd_config").write_text(
                f"ListenAddress {host.address}\nPort 22\nHostKey {hdir / 'ssh_host_ed25519_key'}\n"
                f"PidFile {hdir / 'sshd.pid'}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "UsePAM no\nStrictModes no\nAllowUsers root\nMaxStartups 50\nMaxSessions 50\n"
                "AcceptEnv LANG\nSubsystem sftp internal-sftp\n")
            subprocess.run(in_ns(host, [str(SSHD), "-f", str(hdir / "sshd_config")]), check=True,
                           capture_output=True, timeout=30)
        (self.root / "known_hosts").write_text("\n".join(known) + "\n")
        self.client_config.write_text(
            f"Host *\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.root / 'known_hosts'}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
            "  ConnectTimeout 10\n  LogLevel ERROR\n")
        for host in self.hosts:
            _wait_port(host.address, 22)


def _wait_port(address: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # poll interval
