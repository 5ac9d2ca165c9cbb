"""`python -m gateway` as a real process: configured by DOCTAG_* variables only, JSON
logs with the request id, readiness against PostgreSQL, keys generated on first
start, graceful exit on SIGTERM, and a clear refusal of a bad kong.yml."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config import load_config, with_targets, write_config
from gateway.settings import DEFAULT_CONFIG
from services.common.auth import sign_token

from .test_gateway_support import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TENANT = str(uuid.uuid4())


def _env(tmp_path: Path, config: Path, port: int, db_name: str, status_port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTAG_")}
    env.update({
        "DOCTAG_GATEWAY_CONFIG": str(config), "DOCTAG_HTTP_PORT": str(port), "DOCTAG_DB_NAME": db_name,
        "DOCTAG_GATEWAY_STATUS_PORT": str(status_port or free_port()),
        "DOCTAG_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1",
        # The tokens here are for users that exist only in the token (revocation has its own tests).
        "DOCTAG_GATEWAY_TOKEN_REVOCATION": "false",
    })
    return env


def test_process_serves_and_stops_gracefully(tmp_path: Path, test_db_name: str) -> None:
    # The shipped kong.yml, rewritten to free ports the way the launcher does it.
    config = with_targets(load_config(DEFAULT_CONFIG), {
        "upload-upstream": [f"127.0.0.1:{free_port()}"],
        "search-upstream": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"],
        "model-serving-upstream": [f"127.0.0.1:{free_port()}"],
        "web-upstream": [f"127.0.0.1:{free_port()}"],
    })
    path = write_config(config, tmp_path / "kong.yml", header="test copy of gateway/kong.yml")
    port, status_port = free_port(), free_port()
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=ROOT, stdout=log_file,
                                stderr=subprocess.STDOUT, env=_env(tmp_path, path, port, test_db_name, status_port))
        try:
            base, status = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{status_port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{status}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            assert (tmp_path / "state" / "keys" / "jwt_private.pem").exists()
            ready = httpx.get(f"{status}/readyz", timeout=5)
            assert ready.status_code == 200, ready.text
            # Kong's status_listen: the gateway serves none of these on the proxy port; they fall to
            # the UI's route `/` (its replicas refuse them to proxied requests: test_web_units), whose
            # replica is down here.
            for path_ in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
                assert httpx.get(f"{base}{path_}", timeout=5).status_code == 502, path_
            r = httpx.get(f"{base}/api/v1/search", headers={"X-Request-ID": "proc-test-1"}, timeout=5)
            assert r.status_code == 401
            assert r.json()["request_id"] == "proc-test-1"
            # A token signed with the key the gateway generated passes its jwt plugin; the
            # upstream is down (502), and the access log carries the tenant.
            token = sign_token(private_key_file=tmp_path / "state" / "keys" / "jwt_private.pem",
                               user_id=str(uuid.uuid4()), tenant_id=TENANT, tenant_slug="hr", username="kim",
                               roles=["user"], issuer="doctag", audience="doctag-api", ttl_seconds=60)
            r = httpx.get(f"{base}/api/v1/search", timeout=10,
                          headers={"X-Request-ID": "proc-test-2", "Authorization": f"Bearer {token}"})
            assert r.status_code == 502, r.text
            metrics = httpx.get(f"{status}/metrics", timeout=5).text
            assert "doctag_gateway_upstream_target_healthy" in metrics

            # SIGHUP with a broken file: refused, the running configuration stays.
            good = path.read_text(encoding="utf-8")
            assert "- /api/v1/search\n" in good
            path.write_text(good.replace("- /api/v1/search\n", "- api/v1/search\n"), encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            _wait_for_log(log_path, "configuration reload refused")
            assert httpx.get(f"{base}/api/v1/search", timeout=5).status_code == 401
            # SIGHUP with a valid file without the search route (nor the UI's service, whose `/` and
            # `/api` routes would take the path): applied, search is gone.
            data = yaml.safe_load(good)
            data["services"] = [s for s in data["services"] if s["name"] != "web"]
            data["upstreams"] = [u for u in data["upstreams"] if u["name"] != "web-upstream"]
            for service in data["services"]:
                service["routes"] = [r for r in service["routes"] if r["name"] != "search"]
            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            proc.send_signal(signal.SIGHUP)
            _wait_for_log(log_path, "configuration reloaded")
            assert httpx.get(f"{base}/api/v1/search", timeout=5).status_code == 404
            assert httpx.get(f"{base}/api/v1/quota", timeout=5).status_code == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(timeout=20) == 0
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("request_id") == "proc-test-1"]
    assert access and all(entry["service"] == "gateway" for entry in access)
    assert any(entry.get("status") == 401 for entry in access)
    authenticated = [entry for entry in lines if entry.get("request_id") == "proc-test-2"]
    assert any(entry.get("status") == 502 and entry["tenant_id"] == TENANT for entry in authenticated)
    assert any(entry["message"] == "upstream connect failed" for entry in authenticated)


def _wait_for_log(path: Path, message: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while message not in path.read_text():
        assert time.monotonic() < deadline, f"no {message!r} in the log:\n{path.read_text()[-3000:]}"
        time.sleep(0.1)


def test_bad_config_refused_with_clear_message(tmp_path: Path, test_db_name: str) -> None:
    bad = tmp_path / "kong.yml"
    bad.write_text('_format_version: "3.0"\nservices:\n  - name: upload\n    host: x\n    retries: -1\n'
                   '    routes:\n      - name: r\n        paths: [api]\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "gateway"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env=_env(tmp_path, bad, free_port(), test_db_name))
    assert result.returncode == 2
    assert "services[0].retries" in result.stderr
    assert "services[0].routes[0].paths" in result.stderr
