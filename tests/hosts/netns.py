"""Seven VMs as network namespaces on one private bridge (plus an attacker), for `make test-hosts`.

Bridge `dtbr0` (10.77.0.1/24 in the root namespace: the operator's machine and the test client)
and one namespace `dt-<host>` per VM with its own veth pair, its own address and its own `lo`.
The names are fixed (the seven-host contract), so a run first removes what a crashed earlier run
left behind; teardown kills every process still running inside the namespaces (by pid, as listed
by `ip netns pids`) and deletes the namespaces and the bridge.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

BRIDGE = "dtbr0"
BRIDGE_ADDRESS = "10.77.0.1"
PREFIX_LEN = 24
NS_PREFIX = "dt-"


@dataclass(frozen=True)
class Host:
    name: str      # host name: db, model, web-1, web-2, tagging-1, tagging-2, gateway (attacker)
    role: str      # VM role of services/cli/vm_layout.py ("attacker" for the eighth namespace)
    address: str

    @property
    def netns(self) -> str:
        return NS_PREFIX + self.name

    @property
    def veth(self) -> str:
        """The bridge side of the host's link (at most 15 characters); `ip link set <veth> down` cuts it off."""
        return "dtv-" + self.netns.removeprefix(NS_PREFIX)


# The contract's addresses (namespaces dt-db, dt-model, dt-web-1, ..., dt-gateway, dt-attacker).
HOSTS: tuple[Host, ...] = (
    Host("db", "db", "10.77.0.10"),
    Host("model", "model", "10.77.0.20"),
    Host("web-1", "web", "10.77.0.30"),
    Host("web-2", "web", "10.77.0.31"),
    Host("tagging-1", "tagging", "10.77.0.40"),
    Host("tagging-2", "tagging", "10.77.0.41"),
    Host("gateway", "gateway", "10.77.0.50"),
)
ATTACKER = Host("attacker", "attacker", "10.77.0.99")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def in_ns(host: Host, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside the host's namespace."""
    return ["ip", "netns", "exec", host.netns, *argv]


def pids(netns: str) -> list[int]:
    out = ip("netns", "pids", netns, check=False).stdout
    return [int(p) for p in out.split() if p.strip().isdigit()]


def kill_all(netns: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process of one namespace (the VM losing power); returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (found := pids(netns)) and time.monotonic() < deadline:
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)  # let the kernel reap them before listing again
    return killed


def existing_namespaces() -> list[str]:
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NS_PREFIX)]


def remove_all() -> None:
    """Removes every `dt-*` namespace (after killing what runs in it) and the bridge; idempotent."""
    for netns in existing_namespaces():
        kill_all(netns)
        ip("netns", "delete", netns, check=False)
    for host in (*HOSTS, ATTACKER):
        ip("link", "delete", host.veth, check=False)
    ip("link", "delete", BRIDGE, check=False)


def create(hosts: Sequence[Host] = (*HOSTS, ATTACKER)) -> None:
    """The bridge with the operator's address, and each host's namespace, link and address."""
    remove_all()
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{BRIDGE_ADDRESS}/{PREFIX_LEN}", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    for host in hosts:
        ip("netns", "add", host.netns)
        ip("link", "add", host.veth, "type", "veth", "peer", "name", "dtpeer0")
        ip("link", "set", "dtpeer0", "netns", host.netns)
        ip("link", "set", host.veth, "master", BRIDGE)
        ip("link", "set", host.veth, "up")
        for args in (("link", "set", "dtpeer0", "name", "eth0"),
                     ("addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0"),
                     ("link", "set", "eth0", "up"), ("link", "set", "lo", "up")):
            ip("-n", host.netns, *args)


def set_link(host: Host, up: bool) -> None:
    """Cuts a host off the network (or reconnects it): its bridge-side link goes down."""
    ip("link", "set", host.veth, "up" if up else "down")
