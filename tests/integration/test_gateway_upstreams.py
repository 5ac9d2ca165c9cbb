"""Active health checks against real servers: a stopped replica is found by its probes and
left out (no request is sent to it), and comes back only once its probes succeed again."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .test_gateway_support import ServerThread, echo_app, free_port, gateway_config_data, start_gateway

pytestmark = pytest.mark.integration


def _wait(condition, what: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_failover_and_return_with_active_checks(tmp_path: Path, test_db_name: str, key_dir: Path,
                                               make_token) -> None:  # type: ignore[no-untyped-def]
    a = ServerThread(echo_app("a"), free_port()).start()
    b_port = free_port()
    b = ServerThread(echo_app("b"), b_port).start()
    data = gateway_config_data({"upload-upstream": [f"127.0.0.1:{free_port()}"],
                                "search-upstream": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b_port}"]})
    data["upstreams"][1]["healthchecks"]["active"] = {
        "http_path": "/readyz", "timeout": 1,
        "healthy": {"interval": 0.2, "successes": 2, "http_statuses": [200]},
        "unhealthy": {"interval": 0.2, "tcp_failures": 1, "http_failures": 2, "http_statuses": [503]}}
    gateway = start_gateway(tmp_path, data, db_name=test_db_name, key_dir=key_dir)
    target_b = next(t for t in gateway.apps.gateway.proxy.balancers["search-upstream"].targets if t.port == b_port)
    auth = {"Authorization": f"Bearer {make_token('00000000-0000-4000-8000-000000000001')}"}
    try:
        with httpx.Client(base_url=gateway.url, timeout=10, trust_env=False) as c:
            assert Counter(c.get("/api/v1/search", headers=auth).json()["upstream"] for _ in range(4)) == \
                {"a": 2, "b": 2}
            b.stop()
            _wait(lambda: target_b.state == "unhealthy", "the stopped replica was not found by its probes")
            answers = [c.get("/api/v1/search", headers=auth) for _ in range(10)]
            assert [r.status_code for r in answers] == [200] * 10
            assert {r.json()["upstream"] for r in answers} == {"a"}
            b = ServerThread(echo_app("b"), b_port).start()
            _wait(lambda: target_b.state == "healthy", "the replica did not come back after healthy probes")
            assert "b" in {c.get("/api/v1/search", headers=auth).json()["upstream"] for _ in range(4)}
    finally:
        gateway.stop()
        a.stop()
        b.stop()
