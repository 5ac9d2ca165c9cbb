"""Which source address a login counts against (gateway/login_throttle.py).

Every login through the web UI reaches the gateway from a web replica, so counting failures
by the connecting address would let 20 mistyped passwords lock every UI user out. Like Kong's
`trusted_ips` with `real_ip_header X-Forwarded-For`, the gateway takes the right-most address
of X-Forwarded-For instead, but only when the connection comes from a trusted forwarder
(DOCTAG_GATEWAY_TRUSTED_FORWARDERS: the web replicas' addresses or networks). From any other
client the header is ignored, so nobody can pick the address their failures count against.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR networks; ValueError naming the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(networks)


class TrustedForwarders:
    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = parse_networks(networks)

    def trusts(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def client_address(self, peer: str, forwarded_for: list[str]) -> str:
        """The right-most X-Forwarded-For address when `peer` is trusted (and the header holds a
        valid address there), else `peer` itself."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        last = ",".join(forwarded_for).split(",")[-1].strip()
        try:
            return str(ipaddress.ip_address(last))
        except ValueError:
            return peer
