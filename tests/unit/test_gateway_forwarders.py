"""Which address a login counts against: X-Forwarded-For only from the trusted web replicas."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.forwarders import TrustedForwarders
from gateway.settings import GatewaySettings


def test_a_trusted_web_replica_names_the_users_address() -> None:
    forwarders = TrustedForwarders(["10.0.4.41", "10.0.5.0/24"])
    assert forwarders.client_address("10.0.4.41", ["203.0.113.7"]) == "203.0.113.7"
    # the right-most entry: the one the replica added, not what the browser claimed before it
    assert forwarders.client_address("10.0.5.9", ["1.2.3.4, 203.0.113.8"]) == "203.0.113.8"
    assert forwarders.client_address("10.0.5.9", ["1.2.3.4", "2001:db8::1"]) == "2001:db8::1"


def test_any_other_client_cannot_choose_its_address() -> None:
    forwarders = TrustedForwarders(["10.0.4.41"])
    assert forwarders.client_address("198.51.100.3", ["203.0.113.7"]) == "198.51.100.3"
    assert TrustedForwarders().client_address("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"
    # a trusted peer sending garbage, or nothing, counts as itself
    assert forwarders.client_address("10.0.4.41", ["not-an-address"]) == "10.0.4.41"
    assert forwarders.client_address("10.0.4.41", []) == "10.0.4.41"


def test_a_bad_network_in_the_settings_is_refused() -> None:
    with pytest.raises(ValidationError, match="gateway_trusted_forwarders"):
        GatewaySettings(gateway_trusted_forwarders=["10.0.0.0/33"])
    assert GatewaySettings(gateway_trusted_forwarders=["10.0.0.0/8"]).gateway_trusted_forwarders == ["10.0.0.0/8"]
